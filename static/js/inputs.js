// The form's image inputs: an image to start from (chosen, dropped or pasted),
// a mask painted over it with a brush (mouse, pen or touch), and a PNG dropped
// anywhere else on the form fills the form with the settings it carries.
"use strict";

window.sdsiteInputs = (() => {
  const form = document.getElementById("generate-form");
  const fileInput = document.getElementById("id_init_image");
  const dropZone = document.getElementById("drop-zone");
  const editor = document.getElementById("mask-editor");
  const preview = document.getElementById("init-preview");
  const canvas = document.getElementById("mask-canvas");
  const brush = document.getElementById("brush-size");
  const eraser = document.getElementById("eraser");
  const status = document.getElementById("status");
  const ctx = canvas.getContext("2d");
  const modelSettings = JSON.parse(document.getElementById("model-settings").textContent);
  let painted = false;
  let erasing = false;
  let last = null;

  // The output size an image asks for: its own, or its shape at about the model's own
  // size when it is larger (the server's images.output_size, for the API).
  function outputSize(width, height) {
    const own = (modelSettings[form.elements.model.value] || {}).width || 512;
    const scale = Math.min(1, own / Math.sqrt(width * height));
    const fit = (side) => Math.max(64, Math.min(2048, Math.floor(Math.floor(side * scale) / 8) * 8));
    return [fit(width), fit(height)];
  }

  // Another model takes what suits it: its own size (or the image's shape at it), its
  // steps, guidance and sampler (a turbo model's one step), as InvokeAI does.
  function applyModel() {
    const chosen = modelSettings[form.elements.model.value];
    if (!chosen) return;
    const [width, height] = editor.hidden
      ? [chosen.width, chosen.height]
      : outputSize(preview.naturalWidth, preview.naturalHeight);
    form.elements.width.value = width;
    form.elements.height.value = height;
    for (const [name, value] of Object.entries(chosen)) {
      if (name !== "width" && name !== "height") form.elements[name].value = value;
    }
  }
  form.elements.model.addEventListener("change", applyModel);

  function useFile(file) {
    if (!file || !file.type.startsWith("image/")) return;
    if (fileInput.files[0] !== file) {
      const transfer = new DataTransfer();
      transfer.items.add(file);
      fileInput.files = transfer.files;
    }
    const url = URL.createObjectURL(file);
    preview.onload = () => {
      canvas.width = preview.naturalWidth;
      canvas.height = preview.naturalHeight;
      [form.elements.width.value, form.elements.height.value] = outputSize(
        preview.naturalWidth,
        preview.naturalHeight,
      );
      clearMask();
      editor.hidden = false;
      document.getElementById("image-inputs").open = true;
    };
    preview.src = url;
  }

  function clearMask() {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    painted = false;
  }

  function removeImage() {
    fileInput.value = "";
    editor.hidden = true;
    clearMask();
  }

  // Canvas pixels per CSS pixel: the canvas has the image's own size.
  function point(event) {
    const box = canvas.getBoundingClientRect();
    const scale = canvas.width / box.width;
    return { x: (event.clientX - box.left) * scale, y: (event.clientY - box.top) * scale, scale };
  }

  function stroke(from, to) {
    ctx.globalCompositeOperation = erasing ? "destination-out" : "source-over";
    ctx.strokeStyle = "rgba(255, 255, 255, 1)";
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = Number(brush.value) * to.scale;
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
    if (!erasing) painted = true;
  }

  canvas.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    last = point(event);
    stroke(last, last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!last) return;
    const next = point(event);
    stroke(last, next);
    last = next;
  });
  for (const type of ["pointerup", "pointercancel"]) {
    canvas.addEventListener(type, () => { last = null; });
  }

  eraser.addEventListener("click", () => {
    erasing = !erasing;
    eraser.setAttribute("aria-pressed", String(erasing));
  });
  document.getElementById("clear-mask").addEventListener("click", clearMask);
  document.getElementById("remove-image").addEventListener("click", removeImage);
  fileInput.addEventListener("change", () => useFile(fileInput.files[0]));

  // A drop on the image zone starts from that image; a drop elsewhere on the
  // form reads the settings a PNG carries.
  form.addEventListener("dragover", (event) => event.preventDefault());
  form.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (!file) return;
    if (dropZone.contains(event.target)) useFile(file);
    else readSettings(file);
  });
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) useFile(file);
  });

  async function readSettings(file) {
    const body = new FormData();
    body.append("image", file);
    const response = await fetch("/api/png-info", {
      method: "POST",
      body,
      headers: { "X-CSRFToken": form.querySelector("input[name=csrfmiddlewaretoken]").value },
    }).catch(() => null);
    const data = response ? await response.json().catch(() => ({})) : {};
    if (!response || !response.ok) {
      status.textContent = data.message || "Could not read that file.";
      return;
    }
    const found = Object.entries(data.parameters || {});
    if (!found.length) {
      status.textContent = "That image carries no generation settings.";
      return;
    }
    for (const [name, value] of found) {
      const input = form.elements[name];
      if (input && value !== null && value !== undefined) input.value = String(value);
    }
    status.textContent = `Using the settings of ${file.name} (${data.source}).`;
  }

  // The mask as a PNG: white where painted, black elsewhere; none if nothing is painted.
  function maskBlob() {
    if (!painted || editor.hidden) return Promise.resolve(null);
    const out = document.createElement("canvas");
    out.width = canvas.width;
    out.height = canvas.height;
    const g = out.getContext("2d");
    g.fillStyle = "black";
    g.fillRect(0, 0, out.width, out.height);
    g.drawImage(canvas, 0, 0);
    return new Promise((resolve) => out.toBlob(resolve, "image/png"));
  }

  return {
    async addTo(body) {
      const mask = await maskBlob();
      if (mask) body.set("mask_image", mask, "mask.png");
      if (!fileInput.files.length) body.delete("init_image");
    },
  };
})();
