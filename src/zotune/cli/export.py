"""``zotune export``: write a run's best checkpoint as a Hugging Face model folder, optionally pushed to the hub.

Full fine-tuning gives a folder ``AutoModelForCausalLM.from_pretrained(OUT_DIR)`` loads (safetensors, with the
tokenizer). A LoRA adapter is merged into the weights by default, giving the same kind of folder;
``--no-merge-lora`` writes the PEFT adapter instead (``PeftModel.from_pretrained(base, OUT_DIR)``). Prefix
tuning cannot be merged: its adapter is written. When the zero-shot model won, the base model is written.
OUT_DIR must be new or empty; ``--overwrite`` replaces only a folder that zotune export wrote.
"""

from __future__ import annotations

import argparse
import json
import sys

from zotune.cli._common import run_guarded


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("export", help="write a run's best checkpoint as a Hugging Face model folder",
                                   description=__doc__)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of zotune train")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the folder to write (new or empty)")
    parser.add_argument("--merge-lora", action=argparse.BooleanOptionalAction, default=True,
                        help="LoRA runs: merge the adapter into the weights (a plain transformers model) instead of "
                             "writing the PEFT adapter folder [on]")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                        help="after writing OUT_DIR, upload it to this Hugging Face hub repo (owner/name; needs the "
                             "network and a token: `hf auth login` or HF_TOKEN) [off]")
    parser.add_argument("--private", action="store_true",
                        help="with --push-to-hub: create the repo private "
                             "(an existing repo keeps its visibility) [off]")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT_DIR if it holds an earlier zotune export (and nothing else) [off]")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        from zotune.train.export import PushError, check_push, export_run, push_folder

        if args.private and not args.push_to_hub:
            raise ValueError("--private applies only with --push-to-hub REPO_ID")
        if args.push_to_hub:
            check_push(args.push_to_hub)  # before the model loads
        result = export_run(args.run_dir, args.out_dir, merge_lora=args.merge_lora, overwrite=args.overwrite,
                            repo_id=args.push_to_hub)
        result["pushed_to"] = None
        if args.push_to_hub:
            try:
                result["commit_url"] = push_folder(args.out_dir, args.push_to_hub, private=args.private)
                result["pushed_to"] = args.push_to_hub
            except PushError as exc:
                print(json.dumps(result))
                print(f"zotune export: error: {exc}", file=sys.stderr)
                return 1
        print(json.dumps(result))
        return 0

    return run_guarded("export", body)
