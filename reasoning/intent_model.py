"""The intent model: a Llama-architecture causal LM and its tokenizer (the project's small model
with its own byte-level BPE tokenizer, or a pretrained backbone with its own, e.g.
SmolLM2-135M-Instruct: training/backbone.py), the atom adaptor (2-layer MLP: item vector +
action -> the LM's input space) and the tag vocabulary it was trained on, saved as one Hugging
Face model directory:

    config.json, model.safetensors, tokenizer.json, tokenizer_config.json (with the chat template)
        -> what `transformers serve` / `vllm serve` host
    adaptor.pt, intent.json (atoms, adaptor and training facts), tags.json, category_vectors.npy (Taobao-like catalogs)

`IntentModel.inputs` turns rendered prompts into padded input embeddings, replacing every
`<|item|>` position by the adaptor's output for that item's atom.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from features.catalog import Catalog
from reasoning.context import ACTIONS, ITEM_TOKEN
from reasoning.tags import TagVocabulary

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", ITEM_TOKEN]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def default_torch_threads() -> int:
    """torch's intra-op threads when nothing set them: `OMP_NUM_THREADS`, else one per physical core."""
    import os

    import psutil

    return int(os.environ.get("OMP_NUM_THREADS") or 0) or psutil.cpu_count(logical=False) or 1


def set_torch_threads(n: int) -> int:
    """Set this process's torch intra-op threads to `n`, or with 0 to `default_torch_threads()`,
    and return the number set. The setting is process-wide, and an `IntentEngine` sets the
    reasoner's `intent.threads` (1): a trainer or benchmark that loaded one before training
    ("0: torch's default") trained on one thread of the machine (found when SmolLM2's Beauty SFT
    in benchmarks/intent_row.py, after the tiny row's engine, ran on one of the 2 cores here).

    >>> set_torch_threads(1), torch.get_num_threads()
    (1, 1)
    >>> set_torch_threads(0) == torch.get_num_threads() == default_torch_threads()
    True
    """
    n = n or default_torch_threads()
    torch.set_num_threads(n)
    return n


@dataclass
class LMConfig:
    """Architecture of the intent LM (a Llama decoder)."""

    hidden: int = 160          # model width
    layers: int = 4            # decoder blocks
    heads: int = 5             # attention heads (head dim = hidden / heads)
    intermediate: int = 448    # SwiGLU width
    vocab_size: int = 4096     # BPE vocabulary trained on catalog and tag text
    max_positions: int = 512   # longest prompt + answer


def train_tokenizer(corpus: Sequence[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on the corpus, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|end|>",
                                   pad_token="<|pad|>", additional_special_tokens=SPECIAL_TOKENS[3:])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


class Adaptor(nn.Module):
    """Item atom (embedding ++ one-hot action) -> one input vector of the LM."""

    def __init__(self, atom_dim: int, hidden: int) -> None:
        super().__init__()
        self.atom_dim = atom_dim
        self.net = nn.Sequential(nn.Linear(atom_dim + len(ACTIONS), 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))

    def forward(self, atoms: torch.Tensor) -> torch.Tensor:
        return self.net(atoms)


class AtomTable:
    """item_id -> atom vector (MiniLM for text catalogs, learned category vectors otherwise)."""

    def __init__(self, ids: Sequence[str], vectors: np.ndarray, category_vectors: dict[str, np.ndarray] | None = None,
                 catalog: Catalog | None = None) -> None:
        self.row = {i: k for k, i in enumerate(ids)}
        self.vectors = vectors.astype(np.float32)
        self.dim = vectors.shape[1]
        self.category_vectors = category_vectors
        self.catalog = catalog

    def vector(self, item_id: str) -> np.ndarray:
        k = self.row.get(item_id)
        if k is not None:
            return self.vectors[k]
        if self.category_vectors is not None and self.catalog is not None:
            v = self.category_vectors.get(self.catalog.get(item_id).category)
            if v is not None:
                return v
        return np.zeros(self.dim, dtype=np.float32)

    def atoms(self, items: Sequence[tuple[str, str]]) -> np.ndarray:
        out = np.zeros((len(items), self.dim + len(ACTIONS)), dtype=np.float32)
        for k, (item_id, action) in enumerate(items):
            out[k, : self.dim] = self.vector(item_id)
            if action in ACTIONS:
                out[k, self.dim + ACTIONS.index(action)] = 1.0
        return out


class IntentModel:
    """LM + tokenizer + adaptor + tag vocabulary, in memory."""

    def __init__(self, lm, tokenizer, adaptor: Adaptor, vocab: TagVocabulary, meta: dict) -> None:
        self.lm = lm
        self.tokenizer = tokenizer
        self.adaptor = adaptor
        self.vocab = vocab
        self.meta = meta
        self.item_token_id = tokenizer.convert_tokens_to_ids(ITEM_TOKEN)
        self.end_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)  # the end of the assistant's turn
        self.pad_id = tokenizer.pad_token_id
        self.sep_id = tokenizer.convert_tokens_to_ids(";")

    @property
    def device(self) -> torch.device:
        """Where the LM's weights are (inputs are built there)."""
        return next(self.lm.parameters()).device

    def to(self, device) -> "IntentModel":
        self.lm.to(device)
        self.adaptor.to(device)
        return self

    @property
    def version(self) -> str:
        return self.meta.get("version", "unversioned")

    @classmethod
    def create(cls, config: LMConfig, tokenizer, atom_dim: int, vocab: TagVocabulary, meta: dict, seed: int = 0):
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)
        lm_config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=config.hidden, num_hidden_layers=config.layers,
            num_attention_heads=config.heads, num_key_value_heads=config.heads,
            intermediate_size=config.intermediate, max_position_embeddings=config.max_positions,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, rope_theta=10000.0,
        )
        lm = LlamaForCausalLM(lm_config)
        return cls(lm, tokenizer, Adaptor(atom_dim, config.hidden), vocab, {**meta, "lm": asdict(config)})

    @classmethod
    def from_pretrained(cls, base_dir: Path, atom_dim: int, vocab: TagVocabulary, meta: dict, seed: int = 0):
        """A pretrained backbone (a Hugging Face Llama directory with its tokenizer and chat
        template), with `<|item|>` added to its vocabulary and a fresh adaptor to its width."""
        from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

        torch.manual_seed(seed)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(base_dir))
        tokenizer.add_special_tokens({"additional_special_tokens": [ITEM_TOKEN]})
        tokenizer.padding_side = "left"
        lm = LlamaForCausalLM.from_pretrained(str(base_dir))
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the item slot's vector: the adaptor's
        lm.config.eos_token_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
        return cls(lm, tokenizer, Adaptor(atom_dim, lm.config.hidden_size), vocab, meta)

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.lm.generation_config.eos_token_id = self.end_id
        self.lm.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        torch.save(self.adaptor.state_dict(), path / "adaptor.pt")
        self.vocab.save(path / "tags.json")
        self.save_meta(path)

    def save_meta(self, path: Path) -> None:
        """Write `intent.json` (the training facts) alone, e.g. after a fit on the saved model."""
        (path / "intent.json").write_text(json.dumps({**self.meta, "atom_dim": self.adaptor.atom_dim}, indent=1))

    @classmethod
    def load(cls, path: Path) -> "IntentModel":
        from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

        meta = json.loads((path / "intent.json").read_text())
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
        tokenizer.padding_side = "left"
        lm = LlamaForCausalLM.from_pretrained(str(path)).eval()
        adaptor = Adaptor(meta["atom_dim"], lm.config.hidden_size)
        adaptor.load_state_dict(torch.load(path / "adaptor.pt", weights_only=True))
        adaptor.eval()
        return cls(lm, tokenizer, adaptor, TagVocabulary.load(path / "tags.json"), meta)

    # -- inputs -----------------------------------------------------------------------------------
    def encode_chat(self, msgs: list[dict]) -> tuple[list[int], list[int]]:
        """Token ids of a rendered prompt, split into the context (everything before ` task:`,
        shared by every task) and the task suffix (through `<|assistant|>`). Training and
        inference both tokenize this way, so a prefilled context can be branched into tasks."""
        prompt = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        cut = prompt.rindex(" task:")
        return self.ids(prompt[:cut]), self.ids(prompt[cut:])

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def phrase_ids(self, phrase: str) -> list[int]:
        """Tokens of one listed phrase as generation emits it (after a space)."""
        return self.ids(" " + phrase)

    def inputs(self, sequences: Sequence[list[int]], atoms: Sequence[np.ndarray | None],
               pad_left: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs_embeds, attention_mask, position_ids) for a batch, padded (left by default);
        `atoms[b]` holds one row per `<|item|>` of sequence b, in order."""
        length = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for b, seq in enumerate(sequences):
            if pad_left:
                ids[b, length - len(seq):] = torch.tensor(seq)
                mask[b, length - len(seq):] = 1
            else:
                ids[b, : len(seq)] = torch.tensor(seq)
                mask[b, : len(seq)] = 1
        device = self.device
        ids, mask = ids.to(device), mask.to(device)
        embeds = self.lm.get_input_embeddings()(ids)
        slots = ids == self.item_token_id
        if slots.any():
            rows = [a for a in atoms if a is not None and len(a)]
            if rows:
                vectors = self.adaptor(torch.from_numpy(np.concatenate(rows)).to(device))
                if vectors.shape[0] != int(slots.sum()):
                    raise ValueError(f"{int(slots.sum())} item slots but {vectors.shape[0]} atoms")
                embeds = embeds.clone()
                embeds[slots] = vectors.to(embeds.dtype)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        return embeds, mask, positions
