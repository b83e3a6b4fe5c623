"""A1111's model routes over a folder of single files: titles with the file's hash once the
background hashing knows it, names relative to the folder, broken files named with their
reason, and the checkpoint choice of `POST /options` (global with API auth off)."""

import hashlib

import httpx
import pytest

from tests.support.processes import WebServer, wait_for
from tests.test_checkpoint_folders import SD1_KEYS, SDXL_KEYS, write_checkpoint

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.any_database
def test_the_a1111_model_routes_list_the_folder_with_hashes_and_no_server_paths(tmp_path):
    webui = tmp_path / "webui"
    models = webui / "models" / "Stable-diffusion"
    tiny = write_checkpoint(models / "sd15" / "tiny.safetensors", SD1_KEYS)
    write_checkpoint(models / "xl.safetensors", SDXL_KEYS)
    (models / "broken.safetensors").write_bytes(tiny.read_bytes()[:-1])
    write_checkpoint(webui / "models" / "VAE" / "kl-f8.safetensors", {"decoder.x": (1, 1)})
    embeddings = webui / "embeddings"
    write_checkpoint(embeddings / "style" / "fits-sd1.safetensors", {"emb_params": (2, 768)})
    write_checkpoint(embeddings / "xl-only.safetensors", {"clip_l": (1, 768), "clip_g": (1, 1280)})
    sha = hashlib.sha256(tiny.read_bytes()).hexdigest()
    server = WebServer(tmp_path, SD_WEBUI_DIR=webui, SD_API_AUTH="off")
    try:
        with httpx.Client(base_url=server.url + "/sdapi/v1", timeout=60) as client:

            def listed():
                return {m["filename"]: m for m in client.get("/sd-models").json()}

            assert client.post("/refresh-checkpoints").json() is None
            wait_for(lambda: listed()["sd15/tiny.safetensors"]["sha256"] is not None, 60)
            everything = listed()
            assert everything["sd15/tiny.safetensors"] == {
                "title": f"sd15/tiny.safetensors [{sha[:10]}]",
                "model_name": "sd15_tiny",
                "hash": sha[:10],
                "sha256": sha,
                "filename": "sd15/tiny.safetensors",
                "config": None,
                "family": "sd1",
            }
            assert everything["xl.safetensors"]["family"] == "sdxl"
            assert everything["broken.safetensors"]["unusable"].startswith("truncated: ")
            assert everything["demo"]["title"] == "demo"
            assert str(tmp_path) not in client.get("/sd-models").text

            # Chosen by hash, reported by title; with API auth off it is everyone's.
            assert client.post("/options", json={"sd_model_checkpoint": sha[:10]}).json() is None
            options = client.get("/options").json()
            assert options["sd_model_checkpoint"] == f"sd15/tiny.safetensors [{sha[:10]}]"
            assert options["sd_checkpoint_hash"] == sha

            refused = client.post("/options", json={"sd_model_checkpoint": "broken.safetensors"})
            assert refused.status_code == 422
            assert refused.json()["detail"] == (
                "The checkpoint broken.safetensors cannot be used: truncated: its tensors need "
                f"{tiny.stat().st_size} bytes, the file has {tiny.stat().st_size - 1}"
            )
            unknown = client.post("/options", json={"sd_model_checkpoint": "nope [123]"})
            assert (unknown.status_code, unknown.json()["detail"]) == (
                422,
                "Model not found: nope [123]",
            )
            asked = client.post(
                "/txt2img",
                json={"prompt": "x", "override_settings": {"sd_model_checkpoint": "broken"}},
            )
            assert asked.status_code == 422
            assert "broken.safetensors cannot be used: truncated" in asked.text

            # For the caller's checkpoint (SD 1.x): what fits is loaded, the rest skipped.
            answer = client.get("/embeddings").json()
            assert answer == {
                "loaded": {"fits-sd1": {"step": None, "sd_checkpoint": None,
                                        "sd_checkpoint_name": None, "shape": 768, "vectors": 2}},
                "skipped": {"xl-only": {"step": None, "sd_checkpoint": None,
                                        "sd_checkpoint_name": None, "shape": 1280, "vectors": 1}},
            }  # fmt: skip
            assert client.get("/sd-vae").json() == [
                {"model_name": "kl-f8.safetensors", "filename": "kl-f8.safetensors"}
            ]
            assert client.post("/refresh-vae").json() is None
            assert client.post("/refresh-loras").json() is None
            assert [lora["name"] for lora in client.get("/loras").json()] == ["demo-swap"]
        # The page's picker: the checkpoints grouped by family, each with its family's size.
        page = httpx.get(server.url + "/", timeout=60).text
        assert '<optgroup label="SD 1.x">' in page and '<optgroup label="SDXL">' in page
        assert '<option value="sd15/tiny.safetensors">sd15/tiny.safetensors</option>' in page
        assert "broken.safetensors" not in page
        assert '"xl.safetensors": {"width": 1024, "height": 1024' in page
        assert '"sd15/tiny.safetensors": {"width": 512' in page
    finally:
        server.stop()
