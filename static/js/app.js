// The generation page: post the form, then follow the session's progress over SSE.
"use strict";

(() => {
  const form = document.getElementById("generate-form");
  const button = document.getElementById("generate-button");
  const cancelButton = document.getElementById("cancel-button");
  const bar = document.getElementById("progress");
  const fill = document.getElementById("progress-fill");
  const barText = document.getElementById("progress-text");
  const percentText = document.getElementById("progress-percent");
  const stepsText = document.getElementById("progress-steps");
  const statusText = document.getElementById("status");
  const result = document.getElementById("result");
  const resultImage = document.getElementById("result-image");
  const resultCaption = document.getElementById("result-caption");

  const PHASES = {
    starting: "Starting…",
    "loading model": "Loading the model…",
    "building demo model": "Building the demo model (first use)…",
    "preparing OpenVINO model (first use)": "Preparing OpenVINO model (first use)…",
    "compiling OpenVINO model": "Compiling the OpenVINO model for this size…",
    generating: "Generating…",
    decoding: "Decoding the image…",
    saving: "Saving the image…",
  };

  let source = null;
  let waitingCheck = null;
  let currentSession = null;

  function csrfToken() {
    return form.querySelector("input[name=csrfmiddlewaretoken]").value;
  }

  function setStatus(text, isError = false) {
    statusText.textContent = text;
    statusText.classList.toggle("error", isError);
  }

  function setProgress(current, total) {
    const percent = total > 0 ? Math.min(100, Math.floor((current * 100) / total)) : 0;
    bar.hidden = false;
    barText.hidden = false;
    fill.style.width = `${percent}%`;
    bar.setAttribute("aria-valuenow", String(percent));
    bar.setAttribute("aria-valuetext", `${percent} percent, step ${current} of ${total}`);
    percentText.textContent = `${percent} %`;
    stepsText.textContent = total > 0 ? `step ${current} of ${total}` : "";
  }

  function showErrors(errors) {
    form.querySelectorAll("[data-error-for]").forEach((el) => { el.textContent = ""; });
    const general = [];
    for (const [field, messages] of Object.entries(errors)) {
      const slot = form.querySelector(`[data-error-for="${field}"]`);
      if (slot) {
        slot.textContent = messages.join(" ");
        slot.closest("details")?.setAttribute("open", "");
      } else {
        general.push(messages.join(" "));
      }
    }
    setStatus(general.length ? general.join(" ") : "Please correct the highlighted fields.", true);
  }

  function finish() {
    if (source) source.close();
    source = null;
    stopWaitingCheck();
    button.disabled = false;
    cancelButton.hidden = true;
  }

  function stopWaitingCheck() {
    clearInterval(waitingCheck);
    waitingCheck = null;
  }

  // While a job is queued, ask the server now and then whether any worker can
  // take it, so nobody waits forever on a job no worker serves.
  function checkWaiting(sessionId) {
    waitingCheck = setInterval(async () => {
      const response = await fetch(`/api/sessions/${sessionId}`).catch(() => null);
      if (!response || !response.ok) return;
      const session = await response.json();
      if (session.status !== "pending") return stopWaitingCheck();
      setStatus(session.waiting_for || "Queued: waiting for a worker…", Boolean(session.waiting_for));
    }, 2000);
  }

  function follow(sessionId, total) {
    currentSession = sessionId;
    cancelButton.hidden = false;
    cancelButton.disabled = false;
    bar.classList.remove("done", "failed");
    result.hidden = true;
    setProgress(0, total);
    setStatus("Queued: waiting for a worker…");
    checkWaiting(sessionId);
    source = new EventSource(`/api/progress/${sessionId}`);
    source.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type !== "connected") stopWaitingCheck();
      switch (message.type) {
        case "progress":
          setProgress(message.current_step, message.total_steps);
          if (message.current_step > 0 && message.current_step < message.total_steps) {
            setStatus(PHASES.generating);
          }
          break;
        case "phase":
          setStatus(PHASES[message.phase] || `${message.phase}…`);
          break;
        case "complete":
          bar.classList.add("done");
          setStatus("Done.");
          resultImage.src = message.image_url;
          resultCaption.textContent = form.elements.prompt.value;
          result.hidden = false;
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
        setStatus("The progress stream failed. Reload the page to try again.", true);
        finish();
      }
    };
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    showErrors({});
    setStatus("Sending…");
    const body = new FormData(form);
    let response;
    try {
      response = await fetch(form.action, {
        method: "POST",
        body,
        headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
        credentials: "same-origin",
      });
    } catch (error) {
      setStatus("Could not reach the server.", true);
      button.disabled = false;
      return;
    }
    const data = await response.json().catch(() => ({}));
    if (response.status === 202) {
      // The address bar names the generation, so it can be reloaded or shared.
      history.pushState({ sessionId: data.session_id }, "", `/s/${data.session_id}`);
      follow(data.session_id, data.total_steps);
    } else {
      showErrors(data.errors || { __all__: [`The server answered ${response.status}.`] });
      button.disabled = false;
    }
  });

  cancelButton.addEventListener("click", async () => {
    if (!currentSession) return;
    cancelButton.disabled = true;
    setStatus("Cancelling…");
    const response = await fetch(`/api/sessions/${currentSession}/cancel`, {
      method: "POST",
      headers: { "X-CSRFToken": csrfToken() },
      credentials: "same-origin",
    }).catch(() => null);
    if (!response || response.status >= 400) {
      setStatus("Could not cancel: the generation may have ended already.", true);
    }
    // The progress stream reports the cancellation itself.
  });

  // Back and forward move between generations: the server renders each one.
  window.addEventListener("popstate", () => window.location.reload());

  // A page opened at /s/<id> picks up that session where it stands.
  const initial = JSON.parse(document.getElementById("initial-session").textContent);
  if (initial) {
    form.elements.prompt.value = initial.parameters.prompt;
    button.disabled = true;
    follow(initial.session_id, initial.total_steps);
  }
})();
