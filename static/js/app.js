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
  const alertText = document.getElementById("alert");
  const result = document.getElementById("result");
  const resultImage = document.getElementById("result-image");
  const resultCaption = document.getElementById("result-caption");

  const PHASES = {
    starting: "Starting",
    "loading model": "Loading the model",
    "building demo model": "Building the demo model (first use)",
    "preparing OpenVINO model (first use)": "Preparing the OpenVINO model (first use)",
    "compiling OpenVINO model": "Compiling the OpenVINO model for this size",
    denoising: "Denoising",
    decoding: "Decoding the image",
    saving: "Saving the image",
  };

  let source = null;
  let waitingCheck = null;
  let currentSession = null;
  let phase = "";

  function csrfToken() {
    return form.querySelector("input[name=csrfmiddlewaretoken]").value;
  }

  // The status line is a polite live region; errors also go to an assertive
  // (visually hidden) one so screen readers announce them at once.
  function setStatus(text, isError = false) {
    statusText.textContent = text;
    statusText.classList.toggle("error", isError);
    alertText.textContent = isError ? text : "";
  }

  function about(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 1) return "under a second";
    if (seconds < 90) return `about ${Math.round(seconds)} s`;
    return `about ${Math.round(seconds / 60)} min`;
  }

  function describePhase(eta) {
    const name = PHASES[phase] || phase || "Working";
    const left = about(eta);
    return left ? `${name}… ${left} left` : `${name}…`;
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
  }

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

  function finish() {
    if (source) source.close();
    source = null;
    stopWaitingCheck();
    button.disabled = false;
    cancelButton.hidden = true;
    bar.removeAttribute("aria-busy");
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
      if (session.waiting_for) setStatus(session.waiting_for, true);
    }, 2000);
  }

  function showQueued(message) {
    const eta = about(message.eta_seconds);
    const place = message.position === 1 ? "next in line" : `position ${message.position} in the queue`;
    setStatus(`Queued: ${place}${eta ? `, image in ${eta}` : ""}.`);
  }

  function showPreview(message) {
    resultImage.src = message.image;
    resultImage.alt = `Live preview at step ${message.step}`;
    resultImage.classList.add("preview");
    resultCaption.textContent = `Preview, step ${message.step}`;
    result.hidden = false;
  }

  function showImage(url) {
    resultImage.src = url;
    resultImage.alt = `The generated image: ${form.elements.prompt.value}`;
    resultImage.classList.remove("preview");
    resultCaption.textContent = form.elements.prompt.value;
    result.hidden = false;
  }

  function follow(sessionId, total) {
    currentSession = sessionId;
    cancelButton.hidden = false;
    cancelButton.disabled = false;
    bar.classList.remove("done", "failed");
    bar.setAttribute("aria-busy", "true");
    result.hidden = true;
    phase = "";
    setProgress(0, total);
    setStatus("Queued: waiting for a worker…");
    checkWaiting(sessionId);
    source = new EventSource(`/api/progress/${sessionId}`);
    source.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (!["connected", "queued"].includes(message.type)) stopWaitingCheck();
      switch (message.type) {
        case "queued":
          showQueued(message);
          break;
        case "progress":
          setProgress(message.current_step, message.total_steps);
          if (message.current_step < message.total_steps) phase = "denoising";
          setStatus(describePhase(message.eta_seconds));
          break;
        case "phase":
          phase = message.phase;
          setStatus(describePhase());
          break;
        case "preview":
          showPreview(message);
          break;
        case "complete":
          bar.classList.add("done");
          setStatus("Done.");
          showImage(message.image_url);
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
    let response;
    try {
      response = await fetch(form.action, {
        method: "POST",
        body: new FormData(form),
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

  // A page opened at /s/<id> picks up that session where it stands (the
  // server has filled the form with its settings).
  const initial = JSON.parse(document.getElementById("initial-session").textContent);
  if (initial) {
    button.disabled = true;
    follow(initial.session_id, initial.total_steps);
  }
})();
