// The ControlNet panel: a control image (dropped, pasted or chosen), its preprocessor's
// result from /api/controlnet/detect before generating, the model and weight; the unit
// goes with the form as `controlnet` (JSON) and the file `controlnet_image_0`.
import { csrfToken } from "./shared.js";

const panel = document.getElementById("controlnet-panel");
const fileInput = document.getElementById("control-file");
const moduleSelect = document.getElementById("control-module");
const modelSelect = document.getElementById("control-model");
const weight = document.getElementById("control-weight");
const inputPreview = document.getElementById("control-input");
const detectedPreview = document.getElementById("control-detected");
const statusLine = document.getElementById("control-status");
let controlFile = null;

async function detect() {
  if (!controlFile) return;
  const body = new FormData();
  body.set("image", controlFile);
  body.set("module", moduleSelect.value);
  statusLine.textContent = `Running ${moduleSelect.value}…`;
  const response = await fetch("/api/controlnet/detect", {
    method: "POST",
    body,
    headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
    credentials: "same-origin",
  }).catch(() => null);
  const data = response ? await response.json().catch(() => ({})) : {};
  if (!response || !response.ok) {
    const errors = data.errors || {};
    statusLine.textContent = (errors.image || errors.module || ["The preprocessor failed."])[0];
    detectedPreview.hidden = true;
    return;
  }
  detectedPreview.src = data.image;
  detectedPreview.hidden = false;
  statusLine.textContent = `What ${data.module} makes of it: the model follows this.`;
}

function useFile(file) {
  if (!file || !file.type.startsWith("image/")) return;
  controlFile = file;
  if (inputPreview.src) URL.revokeObjectURL(inputPreview.src);
  inputPreview.src = URL.createObjectURL(file);
  inputPreview.hidden = false;
  detect();
}

if (panel) {
  fileInput.addEventListener("change", () => useFile(fileInput.files[0]));
  moduleSelect.addEventListener("change", detect);
  weight.addEventListener("input", () => {
    document.getElementById("control-weight-value").textContent = weight.value;
  });
  const zone = document.getElementById("control-drop");
  zone.addEventListener("dragover", (event) => event.preventDefault());
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    event.stopPropagation(); // not the form's "drop a PNG to use its settings"
    useFile(event.dataTransfer.files[0]);
  });
  // Capturing, so a paste while the panel is open is the control image, not the
  // image to start from (inputs.js listens on the document).
  window.addEventListener(
    "paste",
    (event) => {
      if (!panel.open) return;
      const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
      if (file) {
        event.stopPropagation();
        useFile(file);
      }
    },
    true,
  );
}

// The unit for the form's body, when the panel has an image.
export function addControlnet(body) {
  if (!panel || !controlFile) return;
  // Pixel perfect: the preprocessor runs at the output's own resolution, so a canny edge
  // stays one crisp pixel wide on the image the model sees.
  const unit = {
    module: moduleSelect.value,
    model: modelSelect.value,
    weight: Number(weight.value),
    pixel_perfect: true,
  };
  body.set("controlnet", JSON.stringify([unit]));
  body.set("controlnet_image_0", controlFile, controlFile.name || "control.png");
}
