"""Data: built-in corpora from the pinned assets and mlx-lm style jsonl directories.

Built-in: `wiki` (Wikipedia articles, markup stripped, split by article) and `chitchat` (human
chats as `messages`, split by chat id). A directory holds `train.jsonl`, `valid.jsonl` and
`test.jsonl` whose records have `text`, `prompt`/`completion` or `messages`.

Text is packed into fixed windows; chats and prompt/completion records are padded with a mask
that keeps the loss on the answer (assistant) tokens only.
"""

import bz2
import hashlib
import json
import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import assets

# Whole articles are encoded before they are cut into windows; transformers warns about that.
logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)

SPLITS = ("train", "valid", "test")
BUILTIN = ("wiki", "chitchat")
WIKI_ATTRIBUTION = "Text from English Wikipedia (CC BY-SA 3.0), via the gensim test data dump."


class DataError(ValueError):
    """A data set cannot be found or read."""


# ---------------------------------------------------------------- Wikipedia markup -> text

_NESTED = [(re.compile(r"\{\{[^{}]*\}\}"), ""), (re.compile(r"\{\|[^{}]*?\|\}", re.S), "")]
_PATTERNS = [
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"<ref[^>/]*/>"), ""),
    (re.compile(r"<ref[^>]*>.*?</ref>", re.S), ""),
    (re.compile(r"<(math|gallery|timeline|score)[^>]*>.*?</\1>", re.S), ""),
    (re.compile(r"</?[a-zA-Z][^>]*>"), ""),
    (re.compile(r"\[\[(?:File|Image|Category|[a-z\-]{2,12}):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]",
                re.I), ""),
    (re.compile(r"\[\[[^\]|]*\|([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[\[([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[https?://[^\s\]]+ ([^\]]*)\]"), r"\1"),
    (re.compile(r"\[https?://[^\]]*\]"), ""),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M), r"\1"),
    (re.compile(r"^[*#:;]+\s*", re.M), ""),
    (re.compile(r"&nbsp;"), " "),
    (re.compile(r"&[a-z]+;"), ""),
    (re.compile(r"[ \t]+"), " "),
    (re.compile(r"\n{3,}"), "\n\n"),
]
_SKIP_SECTIONS = re.compile(
    r"\n(References|External links|See also|Notes|Further reading|Bibliography|Sources)\n.*",
    re.S,
)


def strip_wiki_markup(text: str) -> str:
    """Plain prose from MediaWiki markup (templates, tables, refs, links, formatting removed)."""
    for pattern, repl in _NESTED:  # innermost first, until nothing nested is left
        while True:
            text, count = pattern.subn(repl, text)
            if not count:
                break
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    text = _SKIP_SECTIONS.sub("\n", text)
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("|", "!", "{", "}"))]
    return "\n".join(lines).strip()


@lru_cache(maxsize=1)
def wiki_articles() -> tuple[tuple[str, str], ...]:
    """(title, text) of every article (namespace 0, not a redirect) in the pinned dump."""
    articles = []
    with bz2.open(assets.asset_path("wiki"), "rb") as f:
        for _, element in ET.iterparse(f):
            if not element.tag.endswith("}page"):
                continue
            ns = element.findtext("{*}ns")
            redirect = element.find("{*}redirect") is not None
            title = element.findtext("{*}title") or ""
            raw = element.findtext("{*}revision/{*}text") or ""
            if ns == "0" and not redirect and not raw.lstrip().upper().startswith("#REDIRECT"):
                text = strip_wiki_markup(raw)
                if len(text.split()) >= 50:
                    articles.append((title, text))
            element.clear()
    return tuple(articles)


# ---------------------------------------------------------------- chitchat -> messages


@lru_cache(maxsize=1)
def chitchat_chats() -> tuple[tuple[str, tuple[dict, ...]], ...]:
    """(chat id, messages) for every chat; the first speaker is `user`, the other `assistant`."""
    data = json.loads(assets.asset_path("chitchat").read_text())
    chats = []
    for chat_id, chat in sorted(data.items()):
        turns = []  # consecutive messages of one sender are joined into one turn
        for group in chat.get("messages", []):
            for message in group:
                text, sender = message.get("text", "").strip(), message.get("sender")
                if not text:
                    continue
                if turns and turns[-1][0] == sender:
                    turns[-1] = (sender, turns[-1][1] + "\n" + text)
                else:
                    turns.append((sender, text))
        if len(turns) >= 2:
            first = turns[0][0]
            messages = tuple(
                {"role": "user" if s == first else "assistant", "content": t} for s, t in turns
            )
            chats.append((chat_id, messages))
    return tuple(chats)


# ---------------------------------------------------------------- splits and loading


def split_of(key: str, valid: float = 0.05, test: float = 0.05) -> str:
    """Deterministic split of an item by a hash of its key (stable across runs and machines)."""
    u = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if u < test else "valid" if u < test + valid else "train"


def load_records(data: str, split: str) -> list[dict]:
    """Records of one split: from a built-in corpus name or an mlx-lm style jsonl directory."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {SPLITS}")
    if data == "wiki":
        articles = wiki_articles()  # few and long: 10% each for valid and test
        return [{"text": f"{t}\n\n{x}"} for t, x in articles if split_of(t, 0.1, 0.1) == split]
    if data == "chitchat":
        return [{"messages": list(m)} for k, m in chitchat_chats() if split_of(k) == split]
    path = Path(data)
    if not path.is_dir():
        raise DataError(f"data {data!r} is neither {' nor '.join(BUILTIN)} nor a directory")
    file = path / f"{split}.jsonl"
    if not file.is_file():
        raise DataError(f"{file} does not exist")
    records = []
    for n, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{file}:{n} is not valid JSON: {e}") from None
        if not isinstance(record, dict) or not (
            "text" in record or "messages" in record or {"prompt", "completion"} <= set(record)
        ):
            raise DataError(f"{file}:{n} needs 'text', 'messages' or 'prompt'+'completion'")
        records.append(record)
    if not records:
        raise DataError(f"{file} has no records")
    return records


# ---------------------------------------------------------------- tokenization


def encode_record(record: dict, tokenizer) -> tuple[list[int], int]:
    """Token ids of a record and the index where the loss starts (prompt tokens are masked).

    For `messages` the loss covers every assistant turn after the first user turn: the ids up to
    the first assistant turn are the prompt.
    """
    if "text" in record:
        ids = tokenizer.encode(record["text"])
        return ids + [tokenizer.eos_token_id], 0
    if "messages" in record:
        messages = record["messages"]
        first_answer = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), 0)
        prompt = tokenizer.apply_chat_template(
            messages[:first_answer], add_generation_prompt=True, tokenize=True
        ) if first_answer else []
        ids = tokenizer.apply_chat_template(messages, tokenize=True)
        return list(_ids(ids)), len(_ids(prompt))
    prompt = [{"role": "user", "content": record["prompt"]}]
    if getattr(tokenizer, "chat_template", None):
        full = prompt + [{"role": "assistant", "content": record["completion"]}]
        prompt_ids = _ids(tokenizer.apply_chat_template(prompt, add_generation_prompt=True,
                                                        tokenize=True))
        return list(_ids(tokenizer.apply_chat_template(full, tokenize=True))), len(prompt_ids)
    prompt_ids = tokenizer.encode(record["prompt"])
    answer = tokenizer.encode(record["completion"], add_special_tokens=False)
    return prompt_ids + answer + [tokenizer.eos_token_id], len(prompt_ids)


def _ids(encoded) -> list[int]:
    """apply_chat_template returns a list, or a BatchEncoding in newer transformers."""
    if isinstance(encoded, dict) or hasattr(encoded, "input_ids"):
        encoded = encoded["input_ids"]
    return list(encoded)


@dataclass
class TokenData:
    """Tokenized split: a flat token stream for text, or padded rows + loss masks for chats."""

    tokens: np.ndarray  # (rows, seq_len + 1) int32
    mask: np.ndarray  # (rows, seq_len) float32; 1 where the next-token loss counts

    @property
    def num_rows(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_loss_tokens(self) -> int:
        return int(self.mask.sum())


def tokenize(records: list[dict], tokenizer, seq_len: int, max_tokens: int | None = None
             ) -> TokenData:
    """Pack text records into windows of seq_len + 1 tokens; pad other records one per row."""
    if all("text" in r for r in records):
        stream: list[int] = []
        for record in records:
            stream.extend(encode_record(record, tokenizer)[0])
            if max_tokens and len(stream) >= max_tokens + 1:
                break
        if max_tokens:
            stream = stream[: max_tokens + 1]
        rows = (len(stream) - 1) // seq_len
        if rows < 1:
            raise DataError(f"only {len(stream)} tokens: fewer than one window of {seq_len}")
        tokens = np.array(stream[: rows * seq_len + 1], dtype=np.int32)
        windows = np.stack([tokens[i * seq_len: (i + 1) * seq_len + 1] for i in range(rows)])
        return TokenData(windows, np.ones((rows, seq_len), np.float32))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, masks, total = [], [], 0
    for record in records:
        ids, start = encode_record(record, tokenizer)
        ids = ids[: seq_len + 1]
        if len(ids) < 2 or start >= len(ids) - 1:
            continue
        mask = np.zeros(seq_len, np.float32)
        mask[max(start - 1, 0): len(ids) - 1] = 1
        rows.append(ids + [pad] * (seq_len + 1 - len(ids)))
        masks.append(mask)
        total += int(mask.sum())
        if max_tokens and total >= max_tokens:
            break
    if not rows:
        raise DataError("no record has any answer tokens within the sequence length")
    return TokenData(np.array(rows, np.int32), np.stack(masks))
