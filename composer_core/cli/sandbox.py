"""`composer-core sandbox ...`: run a program in the sandbox by hand (`run`), or serve the SandboxFusion API
(`serve`) for VeRL's sandbox_fusion reward."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from composer_core.errors import ConfigError
from composer_core.files import check_input, read_text
from composer_core.sandbox.protocol import SandboxRequest
from composer_core.sandbox.settings import SandboxConfig, sandbox_config

LANGUAGES = {".py": "python", ".sh": "bash"}
SETTINGS = {"backend": "backend", "timeout": "timeout_s", "memory_mb": "memory_mb",
            "max_processes": "max_processes", "max_output_bytes": "max_output_bytes",
            "work_dir_mb": "work_dir_mb", "max_concurrency": "max_concurrency", "docker_image": "docker_image",
            "url": "sandbox_fusion_url", "python": "python", "readonly_path": "readonly_paths"}


def settings_from(args: argparse.Namespace) -> SandboxConfig:
    """The SandboxConfig of the command's options (omitted ones keep their defaults)."""
    data = {field: getattr(args, option) for option, field in SETTINGS.items()
            if getattr(args, option, None) not in (None, [])}
    return sandbox_config(data, where="option")


def run_command(args: argparse.Namespace) -> int:
    """Run FILE in the sandbox and print the result as JSON; exit 0 when it ended by itself with exit code 0."""
    from composer_core.sandbox.runner import Sandbox

    program = Path(args.file)
    language = args.language or LANGUAGES.get(program.suffix)
    if language is None:
        raise ConfigError(f"cannot tell the language of {program} from its suffix; give --language python or bash")
    stdin = check_input(args.stdin, "--stdin file").read_bytes() if args.stdin else b""
    files = {}
    for item in args.with_file:
        name, separator, path = item.partition("=")
        if not separator:
            raise ConfigError(f"--with-file {item!r}: give NAME=PATH (NAME is its path in the work dir)")
        files[name] = check_input(path, "--with-file").read_bytes()
    request = SandboxRequest(code=read_text(program, "program"), language=language, stdin=stdin, files=files)
    result = Sandbox(settings_from(args)).run(request)
    print(json.dumps(result.to_json(), indent=2))
    return 0 if result.ok else 1


def serve_command(args: argparse.Namespace) -> int:
    """Serve POST /run_code until interrupted."""
    from composer_core.sandbox.server import serve

    serve(settings_from(args), args.host, args.port)
    return 0


def _add_settings(parser: argparse.ArgumentParser) -> None:
    defaults = SandboxConfig.model_fields
    parser.add_argument("--backend", choices=("local", "docker", "sandbox_fusion"), help="default: local")
    parser.add_argument("--timeout", type=float, help=f"seconds (default {defaults['timeout_s'].default})")
    parser.add_argument("--memory-mb", type=int, help=f"MiB (default {defaults['memory_mb'].default})")
    parser.add_argument("--max-processes", type=int, help=f"default {defaults['max_processes'].default}")
    parser.add_argument("--max-output-bytes", type=int, help=f"per stream (default "
                        f"{defaults['max_output_bytes'].default})")
    parser.add_argument("--work-dir-mb", type=int, help=f"MiB (default {defaults['work_dir_mb'].default})")
    parser.add_argument("--max-concurrency", type=int, help="runs at once (default min(cores, 8))")
    parser.add_argument("--docker-image", help=f"docker backend (default {defaults['docker_image'].default})")
    parser.add_argument("--url", help="sandbox_fusion backend: the server's base URL")
    parser.add_argument("--python", help="interpreter inside the sandbox (default: this Python's installation)")
    parser.add_argument("--readonly-path", action="append", default=[],
                        help="local backend: another host path visible read-only (repeatable)")


def add_sandbox_commands(commands: Any) -> None:
    sandbox = commands.add_parser("sandbox", help="run untrusted code in the sandbox; serve the SandboxFusion API")
    sub = sandbox.add_subparsers(dest="sandbox_command", required=True)
    run = sub.add_parser("run", help="run a program in the sandbox and print the result as JSON")
    run.add_argument("file", help="the program (.py or .sh)")
    run.add_argument("--language", choices=("python", "bash"), help="default: from the file's suffix")
    run.add_argument("--stdin", help="a file to give the program as its standard input")
    run.add_argument("--with-file", action="append", default=[], metavar="NAME=PATH",
                     help="also put the file PATH into the work dir as NAME (repeatable)")
    _add_settings(run)
    run.set_defaults(run=run_command)
    serve = sub.add_parser("serve", help="serve SandboxFusion's POST /run_code (for VeRL's reward.sandbox_fusion)")
    serve.add_argument("--port", type=int, default=8080, help="default 8080; 0 picks a free port (printed)")
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    _add_settings(serve)
    serve.set_defaults(run=serve_command)
