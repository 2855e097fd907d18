"""A local lm-eval task from the pinned data, for `mlx_lm.evaluate` where the hub is not reachable.

    python tools/lm_eval_tasks.py -o lm_eval_tasks
    cd lm_eval_tasks && HF_DATASETS_OFFLINE=1 mlx_lm.evaluate --model ../SHARP_DIR \
        --trust-remote-code --tasks sharp_chitchat_reply.yaml --limit 100 \
        --no-apply-chat-template

`sharp_chitchat_reply` is multiple choice over the chitchat test chats: the conversation so
far, then the true next reply among 4 (3 distractors are replies from other test chats); acc
and acc_norm, in HellaSwag's format, read from local JSON lines by lm-eval's `json` dataset
builder (no download). Pass the task file by a name without "/": mlx_lm.evaluate puts the
task names into its output file name. With the hub, the usual suite runs the same way:
`--tasks piqa hellaswag arc_easy arc_challenge winogrande`.
"""

import argparse
import json
import random
from pathlib import Path

from sharp_mlx import data

REPLY_YAML = """task: sharp_chitchat_reply
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def reply_items(max_items: int, seed: int = 0) -> list[dict]:
    """(context, 4 choices, label) from the chitchat test split."""
    rng = random.Random(seed)
    chats = [r["messages"] for r in data.load_records("chitchat", "test")]
    replies = [m["content"] for chat in chats for m in chat[1:]]
    items = []
    for chat in chats:
        if len(chat) < 2:
            continue
        cut = rng.randrange(1, len(chat))
        context = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in chat[:cut])
        role = chat[cut]["role"].capitalize()
        true = chat[cut]["content"]
        others = rng.sample([r for r in replies if r != true], 3)
        choices = [f" {r}" for r in [true, *others]]
        rng.shuffle(choices)
        items.append({"context": f"{context}\n{role}:", "choices": choices,
                      "label": choices.index(f" {true}")})
        if len(items) >= max_items:
            break
    return items


def write_tasks(out: Path, max_items: int = 200) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    reply = out / "sharp_chitchat_reply.jsonl"
    reply.write_text("".join(json.dumps(item) + "\n" for item in reply_items(max_items)))
    task = out / "sharp_chitchat_reply.yaml"
    task.write_text(REPLY_YAML.format(path=reply.resolve()))
    return [task]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("lm_eval_tasks"))
    parser.add_argument("--max-items", type=int, default=200,
                        help="multiple-choice items (one per test chat)")
    args = parser.parse_args()
    for task in write_tasks(args.output, args.max_items):
        print(f"wrote {task}")


if __name__ == "__main__":
    main()
