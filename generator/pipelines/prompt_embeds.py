"""Text embeddings as AUTOMATIC1111 makes them, handed to diffusers as `prompt_embeds`.

The prompt's fragments (`generator.prompts`) are tokenized without the window's
cut: every 75 tokens (or at a BREAK) a chunk closes, each chunk is encoded on its
own as `<start> 75 tokens <end>`, and the chunks are concatenated, so words past
the 77th token reach the model. Each token's embedding is multiplied by its
weight, then the chunk is scaled back to its original mean (A1111's "Original"
emphasis). A prompt whose weights are all 1 gets exactly the embeddings
diffusers would have made from the text itself.

Works for the one-encoder pipelines (SD 1.x and 2.x, the demo) on both backends:
it needs only the pipeline's `tokenizer` and a callable `text_encoder`.
"""

from dataclasses import dataclass

from ..prompts import parse_attention


@dataclass
class Chunk:
    ids: list[int]
    weights: list[float]


def supports(pipe) -> bool:
    """Whether the pipeline is one this module encodes for (one CLIP text encoder)."""
    return (
        getattr(pipe, "tokenizer", None) is not None
        and getattr(pipe, "text_encoder", None) is not None
        and getattr(pipe, "tokenizer_2", None) is None
        and getattr(pipe, "text_encoder_2", None) is None
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


def encode(pipe, prompt: str, chunks_at_least: int = 1):
    """[1, 77 * chunks, width] embeddings of `prompt` (padded with empty chunks to at least
    `chunks_at_least`, so a prompt and its negative line up)."""
    import torch

    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    chunks = chunks_of(tokenizer, prompt)
    chunks += [Chunk([], []) for _ in range(chunks_at_least - len(chunks))]
    length = tokenizer.model_max_length
    device = getattr(encoder, "device", "cpu")
    encoded = []
    for chunk in chunks:
        ids = [tokenizer.bos_token_id, *chunk.ids, tokenizer.eos_token_id]
        ids += [tokenizer.pad_token_id] * (length - len(ids))
        weights = [1.0, *chunk.weights] + [1.0] * (length - 1 - len(chunk.weights))
        with torch.no_grad():
            hidden = encoder(torch.tensor([ids], device=device))[0]
        if any(weight != 1.0 for weight in weights):
            mean = hidden.mean()
            hidden = (
                hidden
                * torch.tensor(weights, dtype=hidden.dtype, device=hidden.device)[None, :, None]
            )
            hidden = hidden * (mean / hidden.mean())
        encoded.append(hidden)
    return torch.cat(encoded, dim=1)


def prompt_embeddings(pipe, prompt: str, negative_prompt: str) -> dict:
    """The pipeline's `prompt_embeds` and `negative_prompt_embeds` for these prompts."""
    positive = len(chunks_of(pipe.tokenizer, prompt))
    negative = len(chunks_of(pipe.tokenizer, negative_prompt))
    both = max(positive, negative)
    return {
        "prompt_embeds": encode(pipe, prompt, both),
        "negative_prompt_embeds": encode(pipe, negative_prompt, both),
    }
