from .base import PipelineBackend


def create_backend(name: str, model: str, device: str) -> PipelineBackend:
    """A not yet loaded backend by its API name (`pytorch` or `openvino`)."""
    if name == "pytorch":
        from .torch_backend import TorchBackend

        return TorchBackend(model, device)
    if name == "openvino":
        from .openvino_backend import OpenVINOBackend

        return OpenVINOBackend(model, device)
    raise ValueError(f"Unknown backend {name!r}: use pytorch or openvino.")
