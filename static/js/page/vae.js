// The VAE picker (A1111's: Automatic, None, the files of models/VAE). Its "Automatic" says
// what it means for the chosen model: the VAE file named like the checkpoint, or the
// model's own. The openvino backend decodes with the model's own only: the picker is off.

import { form } from "./shared.js";

export function setupVaePicker() {
  const picker = form.elements.sd_vae;
  const source = document.getElementById("vae-automatic");
  if (!picker || !source) return;
  const automatic = JSON.parse(source.textContent);
  const automaticOption = [...picker.options].find((option) => option.value === "Automatic");

  function describe() {
    const file = automatic[form.elements.model.value];
    if (automaticOption) {
      automaticOption.textContent = file ? `Automatic (${file})` : "Automatic (the model's own)";
    }
    picker.disabled = form.elements.backend?.value === "openvino";
  }
  form.elements.model.addEventListener("change", describe);
  form.elements.backend?.addEventListener("change", describe);
  describe();
}
