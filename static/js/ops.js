// The /ops page: redraw the figures from each snapshot the stream sends (an ES module).
const $ = (name) => document.querySelector(`[data-ops="${name}"]`);
const text = (name, value) => { $(name).textContent = value; };

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function bytes(count) {
  const units = ["bytes", "KB", "MB", "GB", "TB"];
  let unit = 0;
  while (count >= 1024 && unit < units.length - 1) { count /= 1024; unit += 1; }
  return `${unit ? count.toFixed(1) : count} ${units[unit]}`;
}

function list(name, entries) {
  const element = $(name);
  element.replaceChildren(...entries.map(([label, value]) => {
    const item = document.createElement("li");
    item.textContent = `${label}: ${value}`;
    return item;
  }));
}

function cell(row, content) {
  const td = document.createElement("td");
  if (content instanceof Node) td.append(content); else td.textContent = content;
  row.append(td);
}

function jobCell(job) {
  if (!job) return "idle";
  const wrap = document.createElement("div");
  const label = document.createElement("span");
  label.textContent = `${job.prompt} · step ${job.current_step}/${job.total_steps}`;
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = job.percentage;
  bar.setAttribute("aria-label", `Progress of “${job.prompt}”`);
  wrap.append(label, bar);
  return wrap;
}

function render(snapshot) {
  text("queue-depth", snapshot.queue.depth);
  text("queue-oldest", duration(snapshot.queue.oldest_wait_seconds));
  list("queue-models", Object.entries(snapshot.queue.by_model));
  text("completed", snapshot.last_hour.completed);
  text("failed", snapshot.last_hour.failed);
  text("per-minute", snapshot.last_hour.jobs_per_minute);
  text("media", bytes(snapshot.media_bytes));
  text("disk", snapshot.disk_problem || "");
  list("sessions", Object.entries(snapshot.sessions));
  $("workers").replaceChildren(...snapshot.workers.map((worker) => {
    const row = document.createElement("tr");
    row.dataset.workerId = worker.id;
    cell(row, worker.id);
    const broken = Object.entries(worker.cannot_load || {});
    const state = worker.alive ? (worker.ready ? "alive" : "starting") : "not answering";
    cell(row, broken.length
      ? `unhealthy: cannot load ${broken.map(([model, why]) => `${model} (${why})`).join("; ")}`
      : state);
    const loaded = (worker.loaded || []).length ? ` · loaded: ${worker.loaded.join(", ")}` : "";
    cell(row, `${worker.models.join(", ")} · ${worker.backends.join(", ")}${loaded}`);
    cell(row, jobCell(worker.job));
    return row;
  }));
  text("status", `Updated ${new Date(snapshot.time).toLocaleTimeString()}.`);
}

render(JSON.parse(document.getElementById("ops-snapshot").textContent));
const source = new EventSource("/ops/stream");
source.addEventListener("ops", (event) => render(JSON.parse(event.data)));
source.onerror = () => text("status", "Reconnecting…");
