// The generation page: post the form, follow the newest generation's progress
// over SSE, and list the browser's own queue (every click queues another job).
// An ES module: shared.js holds the page's elements and state, progress.js follows one
// generation, queue.js lists the browser's queue and a batch's tiles.

import { addControlnet } from "./page/controlnet.js";
import { follow } from "./page/progress.js";
import { batchLeft, doneText, refreshQueue, showBatch } from "./page/queue.js";
import { setupVaePicker } from "./page/vae.js";
import {
  bar,
  cancel,
  cancelButton,
  csrfToken,
  form,
  output,
  setStatus,
  state,
} from "./page/shared.js";

function showErrors(errors) {
  form.querySelectorAll("[data-error-for]").forEach((el) => { el.textContent = ""; });
  form.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
  const general = [];
  let first = null;
  for (const [field, messages] of Object.entries(errors)) {
    const slot = form.querySelector(`[data-error-for="${field}"]`);
    const input = form.elements[field];
    if (slot && input) {
      slot.textContent = messages.join(" ");
      slot.id = `error-${field}`;
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", slot.id);
      slot.closest("details")?.setAttribute("open", "");
      first = first || input;
    } else {
      general.push(messages.join(" "));
    }
  }
  if (Object.keys(errors).length === 0) return;
  setStatus(general.length ? general.join(" ") : "Please correct the highlighted fields.", true);
  first?.focus();
}

// On a phone the form fills the screen: bring the progress into view.
function revealOutput() {
  const top = output.getBoundingClientRect().top;
  if (top < 0 || top > window.innerHeight * 0.6) {
    const smooth = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    output.scrollIntoView({ behavior: smooth ? "smooth" : "auto", block: "start" });
  }
}

// Queue a job (the form's, or an upscale of a finished image) and follow it.
async function queueJob(makeBody) {
  showErrors({});
  setStatus("Sending…");
  let response;
  try {
    const body = await makeBody();
    response = await fetch(form.action, {
      method: "POST",
      body,
      headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
      credentials: "same-origin",
    });
  } catch (error) {
    setStatus("Could not reach the server.", true);
    return;
  }
  const data = await response.json().catch(() => ({}));
  if (response.status === 202) {
    // The address bar names the newest generation, so it can be reloaded or shared.
    history.pushState({ sessionId: data.session_id }, "", `/s/${data.session_id}`);
    follow(data.session_id, data.total_steps);
    showBatch(data.session_ids || []);
    refreshQueue();
    revealOutput();
  } else {
    const fallback = data.message || `The server answered ${response.status}.`;
    showErrors(data.errors || { __all__: [fallback] });
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  queueJob(async () => {
    const body = new FormData(form);
    await window.sdsiteInputs.addTo(body);
    addControlnet(body);
    return body;
  });
});

// "Upscale" under a finished image queues an upscale job of it (A1111's Extras): a job
// like the others, with its progress (the upscaler's tiles), history entry and metadata.
document.getElementById("upscale-button").addEventListener("click", () => {
  queueJob(async () => {
    const image = await fetch(document.getElementById("full-size-link").href, {
      credentials: "same-origin",
    });
    const body = new FormData();
    body.append("job", "upscale");
    body.append("upscaler_1", document.getElementById("upscale-with").value);
    body.append("upscaling_resize", "2");
    body.append("init_image", await image.blob(), "image.png");
    return body;
  });
});

// Ctrl+Enter (Cmd+Enter on a Mac) queues from the prompt, as in A1111 and ComfyUI.
form.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    form.requestSubmit();
  }
});

// Cancel stops the whole batch, as A1111's Interrupt does (each image also has its
// own Cancel in "Your queue").
cancelButton.addEventListener("click", async () => {
  if (!state.currentSession) return;
  cancelButton.disabled = true;
  const others = batchLeft().filter((id) => id !== state.currentSession);
  if (state.following) {
    setStatus("Cancelling…");
    if (!(await cancel(state.currentSession)) && !others.length) {
      setStatus("Could not cancel: the generation may have ended already.", true);
    }
  }
  // The progress stream reports the followed job's cancellation itself.
  await Promise.all(others.map(cancel));
  if (!state.following && bar.classList.contains("done")) setStatus(doneText());
  refreshQueue();
});

// The LoRA picker writes <lora:name:weight> at the end of the prompt.
const loraAdd = document.getElementById("lora-add");
if (loraAdd) {
  const weight = document.getElementById("lora-weight");
  const weightValue = document.getElementById("lora-weight-value");
  weight.addEventListener("input", () => {
    weightValue.textContent = Number(weight.value).toFixed(1);
  });
  loraAdd.addEventListener("click", () => {
    const prompt = form.elements.prompt;
    const tag = `<lora:${document.getElementById("lora-name").value}:${Number(weight.value).toFixed(1)}>`;
    prompt.value = prompt.value.trim() ? `${prompt.value.trimEnd()} ${tag}` : tag;
    prompt.dispatchEvent(new Event("input", { bubbles: true }));
    prompt.focus();
  });
}

setupVaePicker();

// Back and forward move between generations: the server renders each one.
window.addEventListener("popstate", () => window.location.reload());

// A page opened at /s/<id> picks up that session where it stands (the
// server has filled the form with its settings).
const initial = JSON.parse(document.getElementById("initial-session").textContent);
if (initial) follow(initial.session_id, initial.total_steps);
refreshQueue();
