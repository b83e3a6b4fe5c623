"""Text embeddings as AUTOMATIC1111 makes them, handed to diffusers as `prompt_embeds`.

The prompt's fragments (`generator.prompts`) are tokenized without the window's
cut: every 75 tokens (or at a BREAK) a chunk closes, each chunk is encoded on its
own as `<start> 75 tokens <end>`, and the chunks are concatenated, so words past
the 77th token reach the model. Each token's embedding is multiplied by its
weight, then the chunk is scaled back to its original mean (A1111's "Original"
emphasis). A prompt whose weights are all 1 gets exactly the embeddings
diffusers would have made from the text itself.

Works for the one-encoder pipelines (SD 1.x and 2.x, the demo) on both backends
(it needs only the pipeline's `tokenizer` and a callable `text_encoder`), and for
SDXL on PyTorch: each chunk goes through both text encoders (their penultimate
layers, side by side, as diffusers does), and the pooled embedding is the second
encoder's of the first chunk, as in A1111. An empty negative prompt is zeros when
the model says so (`force_zeros_for_empty_prompt`), as diffusers makes it.
"""

from dataclasses import dataclass

from ..prompts import parse_attention


@dataclass
class Chunk:
    ids: list[int]
    weights: list[float]


def supports(pipe) -> bool:
    """Whether the pipeline is one this module encodes for (one CLIP text encoder, or SDXL's
    two on PyTorch)."""
    one = (
        getattr(pipe, "tokenizer", None) is not None
        and getattr(pipe, "text_encoder", None) is not None
        and getattr(pipe, "tokenizer_2", None) is None
        and getattr(pipe, "text_encoder_2", None) is None
    )
    return one or is_sdxl(pipe)


def is_sdxl(pipe) -> bool:
    """SDXL on PyTorch: two CLIP encoders of one vocabulary, the second with a projection."""
    import torch

    encoders = [getattr(pipe, name, None) for name in ("text_encoder", "text_encoder_2")]
    return (
        "XL" in type(pipe).__name__
        and all(isinstance(encoder, torch.nn.Module) for encoder in encoders)
        and getattr(pipe, "tokenizer", None) is not None
        and getattr(pipe, "tokenizer_2", None) is not None
        and len(pipe.tokenizer) == len(pipe.tokenizer_2)
    )


def chunks_of(tokenizer, prompt: str) -> list[Chunk]:
    """The prompt's tokens and weights in chunks of the encoder's window less its two ends."""
    window = tokenizer.model_max_length - 2
    chunks: list[Chunk] = []
    ids: list[int] = []
    weights: list[float] = []

    def close() -> None:
        nonlocal ids, weights
        chunks.append(Chunk(ids, weights))
        ids, weights = [], []

    for fragment in parse_attention(prompt):
        if fragment.is_break:
            close()
            continue
        tokens = tokenizer(fragment.text, add_special_tokens=False, truncation=False).input_ids
        for token in tokens:
            if len(ids) == window:
                close()
            ids.append(token)
            weights.append(fragment.weight)
    if ids or not chunks:
        close()
    return chunks


def windows(tokenizer, prompt: str, negative_prompt: str) -> int:
    """How many chunks the embeddings of a prompt and its negative take (the larger count:
    the shorter one is padded with empty chunks)."""
    return max(len(chunks_of(tokenizer, text)) for text in (prompt, negative_prompt))


def encode(pipe, prompt: str, chunks_at_least: int = 1, clip_skip: int = 1):
    """([1, 77 * chunks, width] embeddings of `prompt`, SDXL's pooled embedding or None),
    padded with empty chunks to at least `chunks_at_least` (a prompt and its negative
    line up). `clip_skip` is A1111's: the output of the last layer but `clip_skip - 1`,
    through the final layer norm (as diffusers does; SDXL's, already a layer back, without)."""
    import torch

    tokenizer = pipe.tokenizer
    chunks = chunks_of(tokenizer, prompt)
    chunks += [Chunk([], []) for _ in range(chunks_at_least - len(chunks))]
    length = tokenizer.model_max_length
    sdxl = is_sdxl(pipe)
    encoders = [(pipe.text_encoder, tokenizer)]
    if sdxl:
        encoders.append((pipe.text_encoder_2, pipe.tokenizer_2))
    encoded, pooled = [], None
    for chunk in chunks:
        weights = [1.0, *chunk.weights] + [1.0] * (length - 1 - len(chunk.weights))
        parts = []
        for encoder, its_tokenizer in encoders:
            ids = [its_tokenizer.bos_token_id, *chunk.ids, its_tokenizer.eos_token_id]
            ids += [its_tokenizer.pad_token_id] * (length - len(ids))
            device = getattr(encoder, "device", "cpu")
            with torch.no_grad():
                if not sdxl and clip_skip == 1:
                    parts.append(encoder(torch.tensor([ids], device=device))[0])
                    continue
                output = encoder(torch.tensor([ids], device=device), output_hidden_states=True)
                if not sdxl:
                    skipped = output.hidden_states[-clip_skip]
                    parts.append(encoder.text_model.final_layer_norm(skipped))
                    continue
                parts.append(output.hidden_states[-(clip_skip + 1)])
                if pooled is None and output[0].ndim == 2:  # the second encoder's projection
                    pooled = output[0]
        hidden = torch.cat(parts, dim=-1)
        if any(weight != 1.0 for weight in weights):
            mean = hidden.mean()
            hidden = (
                hidden
                * torch.tensor(weights, dtype=hidden.dtype, device=hidden.device)[None, :, None]
            )
            hidden = hidden * (mean / hidden.mean())
        encoded.append(hidden)
    return torch.cat(encoded, dim=1), pooled


def prompt_embeddings(pipe, prompt: str, negative_prompt: str, clip_skip: int = 1) -> dict:
    """The pipeline's `prompt_embeds` and `negative_prompt_embeds` (and SDXL's pooled ones)."""
    import torch

    both = windows(pipe.tokenizer, prompt, negative_prompt)
    embeds, pooled = encode(pipe, prompt, both, clip_skip)
    negative_embeds, negative_pooled = encode(pipe, negative_prompt, both, clip_skip)
    inputs = {"prompt_embeds": embeds, "negative_prompt_embeds": negative_embeds}
    if pooled is not None:
        if not negative_prompt and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            negative_embeds, negative_pooled = (
                torch.zeros_like(negative_embeds), torch.zeros_like(pooled)
            )  # fmt: skip
        inputs |= {
            "negative_prompt_embeds": negative_embeds,
            "pooled_prompt_embeds": pooled,
            "negative_pooled_prompt_embeds": negative_pooled,
        }
    return inputs
