// "Your queue" (every job this browser has waiting or running) and the batch's tiles.

import {
  about,
  bar,
  cancel,
  cancelButton,
  ENDED,
  phaseText,
  QUEUE_REFRESH_MS,
  setStatus,
  state,
} from "./shared.js";

const queuePanel = document.getElementById("queue-panel");
const queueList = document.getElementById("queue-list");
const batchGrid = document.getElementById("batch-grid");
let queueTimer = null;

// A small bar for one job of the queue or of a batch.
function miniBar(label) {
  const element = document.createElement("div");
  element.className = "progress mini";
  element.setAttribute("role", "progressbar");
  element.setAttribute("aria-label", label);
  element.setAttribute("aria-valuemin", "0");
  element.setAttribute("aria-valuemax", "100");
  const part = document.createElement("div");
  part.className = "progress-fill";
  element.append(part);
  setMiniBar(element, 0);
  return element;
}

function setMiniBar(element, percent) {
  element.setAttribute("aria-valuenow", String(percent));
  element.firstChild.style.width = `${percent}%`;
}

// The browser's own queue: every job it has waiting or running, each with its
// place or its bar and a Cancel button. Polled while anything is in it.
function queueItem(job) {
  const item = document.createElement("li");
  item.dataset.sessionId = job.session_id;
  const link = document.createElement("a");
  link.href = job.url;
  link.className = "queue-prompt";
  link.textContent = job.prompt;
  const where = document.createElement("span");
  where.className = "queue-state";
  if (job.status === "pending") {
    const left = about(job.eta_seconds);
    where.textContent = `#${job.queue_position} in the queue${left ? `, ${left}` : ""}`;
  } else {
    where.textContent = job.waiting_for || `${phaseText(job.phase) || "Running"}: ${job.percentage} %`;
  }
  const jobBar = miniBar(`Progress of “${job.prompt}”`);
  setMiniBar(jobBar, job.percentage);
  const button = document.createElement("button");
  button.type = "button";
  button.className = "secondary";
  button.textContent = "Cancel";
  button.setAttribute("aria-label", `Cancel “${job.prompt}”`);
  button.addEventListener("click", async () => {
    button.disabled = true;
    await cancel(job.session_id);
    refreshQueue();
  });
  item.append(link, where, jobBar, button);
  return item;
}

export async function refreshQueue() {
  clearTimeout(queueTimer);
  const response = await fetch("/api/queue").catch(() => null);
  if (!response || !response.ok) return;
  const { sessions } = await response.json();
  queueList.replaceChildren(...sessions.map(queueItem));
  queuePanel.hidden = sessions.length === 0;
  if (sessions.length) queueTimer = setTimeout(refreshQueue, QUEUE_REFRESH_MS);
}

// Several images per request: a tile each, with its own bar, preview and image.
let batchTimer = null;
let batch = { ids: [], status: {} }; // the batch under the bar, as last read

// The batch's jobs that may still run (the followed one while the page follows it).
export function batchLeft() {
  if (batch.ids.length < 2) return [];
  return batch.ids.filter((id) =>
    id === state.currentSession ? state.following : !ENDED.includes(batch.status[id]),
  );
}

// The bar follows the batch's first job: once it is done, say how many of the
// batch's images are, as each one's tile does.
export function doneText() {
  const total = batch.ids.length;
  if (total < 2) return state.restartNote ? `Done (${state.restartNote.trim()})` : "Done.";
  const status = (id) => (id === state.currentSession ? "completed" : batch.status[id]);
  const count = (wanted) => batch.ids.filter((id) => status(id) === wanted).length;
  const made = count("completed");
  if (made === total) return `Done: all ${total} images.`;
  const ended = [["cancelled", count("cancelled")], ["failed", count("failed")]].filter(
    ([, n]) => n,
  );
  const left = total - made - ended.reduce((sum, [, n]) => sum + n, 0);
  const others = ended.length ? ` (${ended.map(([what, n]) => `${n} ${what}`).join(", ")})` : "";
  return `Done: ${made} of ${total} images${others}${left ? "; the others follow" : ""}.`;
}

export function showBatch(ids) {
  clearTimeout(batchTimer);
  batch = { ids, status: {} };
  batchGrid.replaceChildren();
  batchGrid.hidden = ids.length < 2;
  if (ids.length < 2) return;
  for (const id of ids) {
    const tile = document.createElement("li");
    tile.dataset.sessionId = id;
    tile.innerHTML = '<a><img alt="" width="128" height="128"></a><span class="tile-state"></span>';
    tile.querySelector("a").href = `/s/${id}`;
    tile.querySelector("a").after(miniBar("Progress of this image"));
    batchGrid.append(tile);
  }
  refreshBatch(ids);
}

async function refreshBatch(ids) {
  const response = await fetch(`/api/sessions?ids=${ids.join(",")}`).catch(() => null);
  if (!response || !response.ok) return;
  const { sessions } = await response.json();
  let open = 0;
  for (const session of sessions) {
    const tile = batchGrid.querySelector(`[data-session-id="${session.session_id}"]`);
    if (!tile) continue;
    const picture = session.image_url || session.preview_url;
    const img = tile.querySelector("img");
    if (picture && img.getAttribute("src") !== picture) img.src = picture;
    img.alt = `Seed ${session.parameters.seed}`;
    setMiniBar(tile.querySelector(".progress"), session.percentage);
    tile.querySelector(".tile-state").textContent =
      `seed ${session.parameters.seed}: ${session.status === "running" ? `${session.percentage} %` : session.status}`;
    tile.dataset.status = session.status;
    batch.status[session.session_id] = session.status;
    if (!ENDED.includes(session.status)) open += 1;
  }
  if (bar.classList.contains("done")) setStatus(doneText());
  if (!state.following) cancelButton.hidden = batchLeft().length === 0;
  if (open) batchTimer = setTimeout(() => refreshBatch(ids), QUEUE_REFRESH_MS);
}
