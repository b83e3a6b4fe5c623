// The generation page: post the form, follow the newest generation's progress
// over SSE, and list the browser's own queue (every click queues another job).
"use strict";

(() => {
  const form = document.getElementById("generate-form");
  const cancelButton = document.getElementById("cancel-button");
  const output = document.getElementById("output");
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
  const details = document.getElementById("result-details");
  const queuePanel = document.getElementById("queue-panel");
  const queueList = document.getElementById("queue-list");

  const PHASES = {
    starting: "Starting",
    "loading model": "Loading the model",
    "preparing OpenVINO model (first use)": "Preparing the OpenVINO model (first use)",
    "compiling OpenVINO model": "Compiling the OpenVINO model for this size",
    compiling: "Compiling the model for this size (first job)",
    denoising: "Denoising",
    decoding: "Decoding the image",
    saving: "Saving the image",
  };
  const QUEUE_REFRESH_MS = 1000;
  const LABELS = JSON.parse(document.getElementById("parameter-labels").textContent);
  const batchGrid = document.getElementById("batch-grid");
  const ENDED = ["completed", "failed", "cancelled"];

  let source = null;
  let following = false; // the page follows a running job (by its stream or by polling)
  const pageTitle = document.title;
  let waitingCheck = null;
  let currentSession = null;
  let phase = "";
  let restartNote = "";
  let countdown = null; // {until: ms since epoch, render: (seconds) => text}
  let queueTimer = null;

  function csrfToken() {
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
  function setStatus(text, isError = false, keepCountdown = false) {
    if (!keepCountdown) countdown = null;
    renderText(statusText, text);
    statusText.classList.toggle("error", isError);
    alertText.textContent = isError ? text.replaceAll("`", "") : "";
  }

  // A status with a time left in it counts down between the server's messages.
  function setCountingStatus(eta, render) {
    countdown = eta === null || eta === undefined ? null : { until: Date.now() + eta * 1000, render };
    setStatus(render(eta), false, true);
  }

  setInterval(() => {
    if (!countdown) return;
    setStatus(countdown.render(Math.max(0, (countdown.until - Date.now()) / 1000)), false, true);
  }, 1000);

  function about(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 1) return "under a second";
    if (seconds < 90) return `about ${Math.round(seconds)} s`;
    return `about ${Math.round(seconds / 60)} min`;
  }

  function describePhase(eta) {
    const name = PHASES[phase] || phase || "Working";
    const left = about(eta);
    return restartNote + (left ? `${name}… ${left} left` : `${name}…`);
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
    if (following) document.title = `[${percent} %] ${pageTitle}`;
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
    following = false;
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
    return `${restartNote}Queued: ${place}${left ? `, image in ${left}` : ""}.`;
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
      .map(([name, value]) => [LABELS[name] || name, value]);
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
    document.getElementById("reuse-link").href = `/?from=${sessionId}`;
    document.getElementById("same-seed-link").href = `/?from=${sessionId}&seed=same`;
    document.getElementById("full-size-link").href = session.image_url;
    const download = document.getElementById("download-link");
    download.href = session.image_url;
    download.download = `sdsite-${p.seed}.png`;
    details.hidden = false;
  }

  function follow(sessionId, total) {
    if (source) source.close();
    currentSession = sessionId;
    following = true;
    cancelButton.hidden = false;
    cancelButton.disabled = false;
    bar.classList.remove("done", "failed");
    bar.setAttribute("aria-busy", "true");
    phase = "";
    restartNote = "";
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
          restartNote = `Restarted after a ${message.reason}. `;
          phase = "";
          setProgress(0, message.total_steps || total);
          setStatus(`${restartNote}Waiting for a worker…`);
          checkWaiting(sessionId);
          break;
        case "progress":
          setProgress(message.current_step, message.total_steps);
          // Step 0 only says the job has a worker: until the first step is
          // done the phase (starting, loading, compiling) tells the truth.
          if (message.current_step > 0 && message.current_step < message.total_steps) {
            phase = "denoising";
          }
          setCountingStatus(message.eta_seconds, describePhase);
          break;
        case "phase":
          phase = message.phase;
          // "denoising" comes with step 1, whose progress message follows.
          if (phase === "denoising" && bar.getAttribute("aria-valuenow") === "0") break;
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
      if (currentSession !== sessionId) return;
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

  async function cancel(sessionId) {
    const response = await fetch(`/api/sessions/${sessionId}/cancel`, {
      method: "POST",
      headers: { "X-CSRFToken": csrfToken() },
      credentials: "same-origin",
    }).catch(() => null);
    return response !== null && response.status < 400;
  }

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
    const state = document.createElement("span");
    state.className = "queue-state";
    if (job.status === "pending") {
      const left = about(job.eta_seconds);
      state.textContent = `#${job.queue_position} in the queue${left ? `, ${left}` : ""}`;
    } else {
      state.textContent = job.waiting_for || `${PHASES[job.phase] || job.phase || "Running"}: ${job.percentage} %`;
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
    item.append(link, state, jobBar, button);
    return item;
  }

  async function refreshQueue() {
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
  function batchLeft() {
    if (batch.ids.length < 2) return [];
    return batch.ids.filter((id) =>
      id === currentSession ? following : !ENDED.includes(batch.status[id]),
    );
  }

  // The bar follows the batch's first job: once it is done, say how many of the
  // batch's images are, as each one's tile does.
  function doneText() {
    const total = batch.ids.length;
    if (total < 2) return restartNote ? `Done (${restartNote.trim()})` : "Done.";
    const status = (id) => (id === currentSession ? "completed" : batch.status[id]);
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

  function showBatch(ids) {
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
    if (!following) cancelButton.hidden = batchLeft().length === 0;
    if (open) batchTimer = setTimeout(() => refreshBatch(ids), QUEUE_REFRESH_MS);
  }

  // On a phone the form fills the screen: bring the progress into view.
  function revealOutput() {
    const top = output.getBoundingClientRect().top;
    if (top < 0 || top > window.innerHeight * 0.6) {
      const smooth = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
      output.scrollIntoView({ behavior: smooth ? "smooth" : "auto", block: "start" });
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showErrors({});
    setStatus("Sending…");
    let response;
    try {
      const body = new FormData(form);
      await window.sdsiteInputs.addTo(body);
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
    if (!currentSession) return;
    cancelButton.disabled = true;
    const others = batchLeft().filter((id) => id !== currentSession);
    if (following) {
      setStatus("Cancelling…");
      if (!(await cancel(currentSession)) && !others.length) {
        setStatus("Could not cancel: the generation may have ended already.", true);
      }
    }
    // The progress stream reports the followed job's cancellation itself.
    await Promise.all(others.map(cancel));
    if (!following && bar.classList.contains("done")) setStatus(doneText());
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

  // Back and forward move between generations: the server renders each one.
  window.addEventListener("popstate", () => window.location.reload());

  // A page opened at /s/<id> picks up that session where it stands (the
  // server has filled the form with its settings).
  const initial = JSON.parse(document.getElementById("initial-session").textContent);
  if (initial) follow(initial.session_id, initial.total_steps);
  refreshQueue();
})();
