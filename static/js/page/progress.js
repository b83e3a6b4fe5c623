// Following one generation: its progress over SSE (or by polling when no stream is free),
// its phases, live previews, and the image with its parameters at the end.

import { batchLeft, doneText, refreshQueue } from "./queue.js";
import {
  about,
  bar,
  cancelButton,
  form,
  phaseText,
  setCountingStatus,
  setStatus,
  state,
} from "./shared.js";

const fill = document.getElementById("progress-fill");
const barText = document.getElementById("progress-text");
const percentText = document.getElementById("progress-percent");
const stepsText = document.getElementById("progress-steps");
const result = document.getElementById("result");
const resultImage = document.getElementById("result-image");
const resultCaption = document.getElementById("result-caption");
const details = document.getElementById("result-details");
const LABELS = JSON.parse(document.getElementById("parameter-labels").textContent);
const pageTitle = document.title;

let source = null;
let waitingCheck = null;

function describePhase(eta) {
  const name = phaseText(state.phase) || "Working";
  const left = about(eta);
  return state.restartNote + (left ? `${name}… ${left} left` : `${name}…`);
}

function setProgress(current, total) {
  const percent = total > 0 ? Math.min(100, Math.floor((current * 100) / total)) : 0;
  bar.hidden = false;
  barText.hidden = false;
  fill.style.width = `${percent}%`;
  bar.setAttribute("aria-valuenow", String(percent));
  bar.setAttribute(
    "aria-valuetext",
    total > 0 ? `${percent} percent, step ${current} of ${total}` : `${percent} percent`,
  );
  percentText.textContent = `${percent} %`;
  stepsText.textContent = total > 0 ? `step ${current} / ${total}` : "";
  // The tab shows it too, for whoever watches from another tab (as A1111 and ComfyUI do).
  if (state.following) document.title = `[${percent} %] ${pageTitle}`;
}

function finish() {
  if (source) source.close();
  source = null;
  state.following = false;
  document.title = pageTitle;
  stopWaitingCheck();
  cancelButton.hidden = batchLeft().length === 0; // a batch's others can still be cancelled
  bar.removeAttribute("aria-busy");
  refreshQueue();
}

function stopWaitingCheck() {
  clearInterval(waitingCheck);
  waitingCheck = null;
}

// While a job is queued, ask the server now and then whether any worker can
// take it, so nobody waits forever on a job no worker serves.
function checkWaiting(sessionId) {
  stopWaitingCheck();
  waitingCheck = setInterval(async () => {
    const response = await fetch(`/api/sessions/${sessionId}`).catch(() => null);
    if (!response || !response.ok) return;
    const session = await response.json();
    if (session.status !== "pending") return stopWaitingCheck();
    if (session.waiting_for) setStatus(session.waiting_for, true);
  }, 2000);
}

function queuedText(position, eta) {
  const place = position === 1 ? "next in line" : `position ${position} in the queue`;
  const left = about(eta);
  return `${state.restartNote}Queued: ${place}${left ? `, image in ${left}` : ""}.`;
}

function showQueued(message) {
  setCountingStatus(message.eta_seconds, (eta) => queuedText(message.position, eta));
}

function showPreview(message) {
  resultImage.src = message.image;
  resultImage.alt = `Live preview at step ${message.step}`;
  resultImage.classList.add("preview");
  resultCaption.textContent = `Preview, step ${message.step}`;
  details.hidden = true;
  result.hidden = false;
}

function showImage(url) {
  resultImage.src = url;
  resultImage.alt = `The generated image: ${form.elements.prompt.value}`;
  resultImage.classList.remove("preview");
  resultCaption.textContent = form.elements.prompt.value;
  result.hidden = false;
}

// ControlNet units in a few words each, as the history writes them.
function unitsText(units) {
  return units.map((u) => `${u.module}, ${u.model} at ${u.weight}`).join("; ");
}

// What A1111 shows under an image: its parameters, and ways to reuse them.
async function showDetails(sessionId) {
  const response = await fetch(`/api/sessions/${sessionId}`).catch(() => null);
  if (!response || !response.ok) return;
  const session = await response.json();
  const p = session.parameters;
  resultCaption.textContent = p.prompt;
  resultImage.alt = `The generated image: ${p.prompt}`;
  // Every parameter the session has, labelled as the form labels it.
  const rows = Object.entries(p)
    .filter(([name, value]) => name !== "prompt" && value !== "" && value !== null)
    .map(([name, value]) => [LABELS[name] || name, Array.isArray(value) ? unitsText(value) : value]);
  const list = document.getElementById("result-parameters");
  list.replaceChildren(
    ...rows.flatMap(([name, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.textContent = String(value);
      return [dt, dd];
    }),
  );
  // The control images the job kept, beside its settings.
  for (const [index, unit] of (session.control_images || []).entries()) {
    const dt = document.createElement("dt");
    dt.textContent = `Control image ${index}`;
    const dd = document.createElement("dd");
    const img = document.createElement("img");
    img.src = unit.image_url;
    img.alt = `Control image ${index} (${unit.module})`;
    img.width = 64;
    img.height = 64;
    dd.append(img);
    list.append(dt, dd);
  }
  document.getElementById("reuse-link").href = `/?from=${sessionId}`;
  document.getElementById("same-seed-link").href = `/?from=${sessionId}&seed=same`;
  document.getElementById("full-size-link").href = session.image_url;
  const download = document.getElementById("download-link");
  download.href = session.image_url;
  download.download = `sdsite-${p.seed}.png`;
  details.hidden = false;
}

export function follow(sessionId, total) {
  if (source) source.close();
  state.currentSession = sessionId;
  state.following = true;
  cancelButton.hidden = false;
  cancelButton.disabled = false;
  bar.classList.remove("done", "failed");
  bar.setAttribute("aria-busy", "true");
  state.phase = "";
  state.restartNote = "";
  setProgress(0, total);
  setStatus("Queued: waiting for a worker…");
  checkWaiting(sessionId);
  source = new EventSource(`/api/progress/${sessionId}`);
  source.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (!["connected", "queued", "restarted"].includes(message.type)) stopWaitingCheck();
    switch (message.type) {
      case "queued":
        showQueued(message);
        break;
      case "restarted":
        // The job went back to the queue; its steps count again from zero.
        state.restartNote = `Restarted after a ${message.reason}. `;
        state.phase = "";
        setProgress(0, message.total_steps || total);
        setStatus(`${state.restartNote}Waiting for a worker…`);
        checkWaiting(sessionId);
        break;
      case "progress":
        setProgress(message.current_step, message.total_steps);
        // Step 0 only says the job has a worker: until the first step is
        // done the phase (starting, loading, compiling) tells the truth.
        if (message.current_step > 0 && message.current_step < message.total_steps) {
          state.phase = "denoising";
        }
        setCountingStatus(message.eta_seconds, describePhase);
        break;
      case "phase":
        state.phase = message.phase;
        // "denoising" comes with step 1, whose progress message follows.
        if (state.phase === "denoising" && bar.getAttribute("aria-valuenow") === "0") break;
        setStatus(describePhase());
        break;
      case "stalled":
        setStatus(message.message, true);
        break;
      case "preview":
        showPreview(message);
        break;
      case "complete":
        bar.classList.add("done");
        setStatus(doneText());
        showImage(message.image_url);
        showDetails(sessionId);
        finish();
        break;
      case "error":
        bar.classList.add("failed");
        setStatus(`Failed: ${message.message}`, true);
        finish();
        break;
      case "cancelled":
        bar.classList.add("failed");
        setStatus("Cancelled.", true);
        finish();
        break;
    }
  };
  source.onerror = () => {
    // EventSource reconnects on its own while the server is reachable; say so.
    if (source && source.readyState === EventSource.CONNECTING) {
      setStatus("Connection to the server lost, reconnecting…", true);
    } else {
      // Refused (the server has no stream free: 503) or failed: follow by polling.
      source.close();
      source = null;
      poll(sessionId);
    }
  };
}

// Follow a session by reading it every two seconds, when no stream is to be had.
function poll(sessionId) {
  const tick = async () => {
    if (state.currentSession !== sessionId) return;
    const response = await fetch(`/api/sessions/${sessionId}`, { credentials: "same-origin" })
      .catch(() => null);
    if (response && response.status === 404) {
      setStatus("This generation no longer exists.", true);
      finish();
      return;
    }
    if (!response || !response.ok) {
      setTimeout(tick, 3000);
      return;
    }
    const session = await response.json();
    setProgress(session.current_step, session.total_steps);
    if (session.status === "completed") {
      bar.classList.add("done");
      setStatus(doneText());
      showImage(session.image_url);
      showDetails(sessionId);
      finish();
    } else if (session.status === "failed" || session.status === "cancelled") {
      bar.classList.add("failed");
      setStatus(session.status === "failed" ? `Failed: ${session.error}` : "Cancelled.", true);
      finish();
    } else {
      setStatus(session.status === "pending"
        ? "Queued: waiting for a worker… (following by polling)"
        : `Step ${session.current_step} of ${session.total_steps} (following by polling)`);
      setTimeout(tick, 2000);
    }
  };
  tick();
}
