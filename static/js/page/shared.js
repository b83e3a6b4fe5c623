// What the page's modules share: its elements, its state, and the status line.
// Imported by queue.js, progress.js and app.js; imports nothing.

export const form = document.getElementById("generate-form");
export const cancelButton = document.getElementById("cancel-button");
export const output = document.getElementById("output");
export const bar = document.getElementById("progress");
const statusText = document.getElementById("status");
const alertText = document.getElementById("alert");

export const PHASES = {
  starting: "Starting",
  "preparing OpenVINO model (first use)": "Preparing the OpenVINO model (first use)",
  "compiling OpenVINO model": "Compiling the OpenVINO model for this size",
  compiling: "Compiling the model for this size (first job)",
  denoising: "Denoising",
  decoding: "Decoding the image",
  saving: "Saving the image",
};
// A phase as the page says it: the worker's "loading sd15_dreamshaper..." names the model.
export function phaseText(phase) {
  if (PHASES[phase]) return PHASES[phase];
  return phase?.startsWith("loading ") ? `Loading ${phase.slice("loading ".length)}` : phase;
}
export const QUEUE_REFRESH_MS = 1000;
export const ENDED = ["completed", "failed", "cancelled"];

// The page's state, one object so every module reads and writes the same values.
export const state = {
  following: false, // the page follows a running job (by its stream or by polling)
  currentSession: null,
  phase: "",
  restartNote: "",
  countdown: null, // {until: ms since epoch, render: (seconds) => text}
};

export function csrfToken() {
  return form.querySelector("input[name=csrfmiddlewaretoken]").value;
}

// Text with `backticks` shows those parts as code; built as DOM nodes, never HTML.
function renderText(element, text) {
  element.replaceChildren(
    ...text.split("`").map((part, i) => {
      if (i % 2 === 0) return document.createTextNode(part);
      const code = document.createElement("code");
      code.textContent = part;
      return code;
    }),
  );
}

// The status line is a polite live region; errors also go to an assertive
// (visually hidden) one so screen readers announce them at once.
export function setStatus(text, isError = false, keepCountdown = false) {
  if (!keepCountdown) state.countdown = null;
  renderText(statusText, text);
  statusText.classList.toggle("error", isError);
  alertText.textContent = isError ? text.replaceAll("`", "") : "";
}

// A status with a time left in it counts down between the server's messages.
export function setCountingStatus(eta, render) {
  state.countdown =
    eta === null || eta === undefined ? null : { until: Date.now() + eta * 1000, render };
  setStatus(render(eta), false, true);
}

setInterval(() => {
  const countdown = state.countdown;
  if (!countdown) return;
  setStatus(countdown.render(Math.max(0, (countdown.until - Date.now()) / 1000)), false, true);
}, 1000);

export function about(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 1) return "under a second";
  if (seconds < 90) return `about ${Math.round(seconds)} s`;
  return `about ${Math.round(seconds / 60)} min`;
}

export async function cancel(sessionId) {
  const response = await fetch(`/api/sessions/${sessionId}/cancel`, {
    method: "POST",
    headers: { "X-CSRFToken": csrfToken() },
    credentials: "same-origin",
  }).catch(() => null);
  return response !== null && response.status < 400;
}
