"""`optimum-quantize push DIR REPO_ID`: publish a saved quantized model folder to the Hub in one commit."""

from __future__ import annotations

import argparse


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="A folder written by save_pretrained of a quantized model (holds quantization_config.json).")
    parser.add_argument("repo_id", help="The Hub repository to publish to, 'org/name' (created when missing).")
    parser.add_argument("--private", action="store_true", default=None, help="Create the repository private.")
    parser.add_argument("--revision", help="Branch to commit to (created from main when missing; default: main).")
    parser.add_argument("--path-in-repo", default="", help="Folder inside the repository to publish into (default: its root).")
    parser.add_argument("--commit-message", help="Commit message (default: one naming the task, backend and method).")
    parser.add_argument("--token", help="Hub token with write access. Prefer HF_TOKEN or `hf auth login`: a token "
                        "on the command line is visible to other users of this machine.")


def run_push(args) -> int:
    """Publish a saved quantized model folder to the Hub, with a generated model card."""
    from ..hub import push_folder_to_hub

    info = push_folder_to_hub(
        args.folder, args.repo_id, private=args.private, token=args.token, commit_message=args.commit_message,
        revision=args.revision, path_in_repo=args.path_in_repo,
    )
    print(f"Published {args.folder} to {args.repo_id} in one commit: {info.commit_url}")
    return 0
