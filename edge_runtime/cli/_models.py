"""`edge-runtime models` commands: package, verify, sign, and manage an on-device store (ls, install, activate,
rollback). `models quantize` is registered by :mod:`edge_runtime.cli._models_quantize`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge_runtime._errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `models` commands to the top-level parser."""
    from . import _models_quantize

    group = sub.add_parser("models", help="package, verify, sign and install model bundles")
    msub = group.add_subparsers(dest="models_command", metavar="COMMAND", required=True)

    p = msub.add_parser("package", help="build a model bundle (manifest + model) from an .onnx or .tflite file")
    p.add_argument("model", type=Path, help="the model file (.onnx or .tflite)")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write (or DIR.tar.gz)")
    p.add_argument("--name", required=True, help="model name, e.g. ctr")
    p.add_argument("--version", type=int, required=True, help="integer model version >= 1")
    p.add_argument(
        "--feature",
        action="append",
        default=[],
        metavar="REF[=DEFAULT]",
        help="a feature ref (view:feature) of the input vector, in order; repeat for each",
    )
    p.add_argument("--features-file", type=Path, help="JSON list of features ({ref, default, mean, std} or refs)")
    p.add_argument("--labels", action="append", default=[], metavar="OUTPUT=A,B,..", help="class labels of an output")
    p.add_argument("--quantization", default="none", help="none, dynamic-int8, static-int8 or full-int8")
    p.add_argument("--quantization-notes", default="", help="free-text notes on the quantisation")
    p.add_argument("--health-inputs", type=Path, help=".npz of sample inputs (by input name); outputs are computed")
    p.add_argument("--atol", type=float, default=1e-4, help="health-check tolerance (default 1e-4)")
    p.add_argument("--metadata", help="JSON object stored as the manifest's metadata")
    p.add_argument("--serving", help="JSON object stored as the manifest's serving section")
    p.add_argument("--archive", action="store_true", help="write a single .tar.gz instead of a directory")
    p.add_argument("--sign-key", type=Path, help="private key to sign the bundle with")
    p.set_defaults(handler=_package)

    p = msub.add_parser("verify", help="check a bundle: manifest, size, sha256, signature and health check")
    p.add_argument("bundle", type=Path, help="bundle directory or .tar.gz")
    p.add_argument("--trusted-key", action="append", default=[], type=Path, help="trusted public key (repeatable)")
    p.add_argument("--require-signature", action="store_true", help="fail when the bundle is unsigned")
    p.add_argument("--no-load", action="store_true", help="skip loading the model and running its health check")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(handler=_verify)

    p = msub.add_parser("sign", help="sign a bundle's manifest with an Ed25519 private key")
    p.add_argument("bundle", type=Path, help="bundle directory or .tar.gz")
    p.add_argument("--key", type=Path, required=True, help="private key file (from `edge-runtime keys generate`)")
    p.set_defaults(handler=_sign)

    p = msub.add_parser("ls", help="list the versions installed in a model store")
    _store_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_ls)

    p = msub.add_parser("install", help="verify and install a bundle into a model store")
    p.add_argument("bundle", type=Path, help="bundle directory or .tar.gz")
    _store_arg(p)
    p.add_argument("--trusted-key", action="append", default=[], type=Path, help="require a signature by this key")
    p.add_argument("--activate", action="store_true", help="activate the version after installing it")
    p.add_argument("--allow-downgrade", action="store_true", help="accept a version older than the active one")
    p.set_defaults(handler=_install)

    p = msub.add_parser("activate", help="health-check a version and make it the active one")
    p.add_argument("name", help="model name")
    p.add_argument("version", type=int, nargs="?", help="version (default: the newest installed)")
    _store_arg(p)
    p.add_argument("--allow-downgrade", action="store_true", help="accept a version older than the active one")
    p.set_defaults(handler=_activate)

    p = msub.add_parser("rollback", help="swap a model back to its previous version")
    p.add_argument("name", help="model name")
    _store_arg(p)
    p.set_defaults(handler=_rollback)

    _models_quantize.register(msub)


def _store_arg(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", type=Path, help="model store directory")
    where.add_argument(
        "--config",
        type=Path,
        help="device profile: its data_dir's model store, its trusted keys, backend and threads",
    )
    where.add_argument("--data-dir", type=Path, help="a runtime data directory (its models/ store)")
    p.add_argument("--keep", type=int, default=2, help="versions kept beyond active and previous (default 2)")


def _json_arg(raw: str | None, option: str) -> Any:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"not valid JSON ({exc})", key=option, expected="a JSON object") from None
    if not isinstance(value, dict):
        raise ConfigError("must be a JSON object", key=option, expected="a JSON object", got=value)
    return value


def _features(args: argparse.Namespace) -> list[Any]:
    features: list[Any] = []
    if args.features_file is not None:
        try:
            loaded = json.loads(args.features_file.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read a JSON list ({exc})", file=args.features_file) from None
        if not isinstance(loaded, list):
            raise ConfigError("must hold a JSON list", file=args.features_file, expected="[...]", got=type(loaded))
        features.extend(loaded)
    for item in args.feature:
        ref, sep, default = item.partition("=")
        try:
            features.append({"ref": ref, "default": float(default)} if sep else ref)
        except ValueError:
            raise ConfigError("default must be a number", key="--feature", expected="REF=NUMBER", got=item) from None
    return features


def _labels(items: list[str]) -> dict[str, list[str]] | None:
    if not items:
        return None
    out = {}
    for item in items:
        name, sep, labels = item.partition("=")
        if not sep or not name:
            raise ConfigError("expected OUTPUT=A,B,...", key="--labels", got=item)
        out[name] = labels.split(",")
    return out


def _package(args: argparse.Namespace) -> int:
    from edge_runtime.models import package_bundle

    health = None
    if args.health_inputs is not None:
        import numpy as np

        try:
            with np.load(args.health_inputs) as data:
                health = {"inputs": {k: data[k] for k in data.files}, "atol": args.atol}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read sample inputs ({exc})", file=args.health_inputs) from None
    out = package_bundle(
        args.model,
        args.out,
        name=args.name,
        version=args.version,
        features=_features(args),
        output_labels=_labels(args.labels),
        quantization={"scheme": args.quantization, "notes": args.quantization_notes},
        health_check=health,
        metadata=_json_arg(args.metadata, "--metadata"),
        serving=_json_arg(args.serving, "--serving"),
        archive=args.archive,
        signing_key=args.sign_key,
    )
    print(f"wrote {out}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from edge_runtime.models import check_health, open_backend, open_bundle

    keys = args.trusted_key or None
    with open_bundle(args.bundle) as bundle:
        key = bundle.verify(trusted_keys=keys, require_signature=args.require_signature or None)
        m = bundle.manifest
        errors: dict[str, float] = {}
        if not args.no_load:
            backend = open_backend(bundle.model_path, fmt=m.format)
            try:
                errors = check_health(backend, m)
            finally:
                backend.close()
    if args.json:
        from ._output import print_json

        print_json(m.to_dict())
        return 0
    print(f"{args.bundle}: {m.name} v{m.version} ({m.format}, {m.size} bytes, sha256 {m.sha256[:16]}…) is intact")
    print(f"  signature: {'valid, key ' + key if key else ('present, not checked' if bundle.signature else 'none')}")
    if args.no_load:
        print("  health check: skipped (--no-load)")
    elif m.health_check is None:
        print("  health check: none in the manifest; a warm-up run succeeded")
    else:
        worst = max(errors.values(), default=0.0)
        print(f"  health check: passed (max abs error {worst:.3g}, atol {m.health_check.atol:g})")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from edge_runtime.models import sign_bundle

    signature = sign_bundle(args.bundle, args.key)
    print(f"signed {args.bundle} with key {signature.key_id}")
    return 0


def _open_store(args: argparse.Namespace, *, trusted: list[Path] | None = None) -> Any:
    from edge_runtime.models import ModelStore

    if args.config is not None:
        # The store the device's runtime uses, with the profile's signature requirement: a CLI install on a
        # device must not bypass the keys the sync agent enforces.
        from edge_runtime._config import load_config

        config = load_config(args.config)
        keys = [*(trusted or []), *(config.sync.trusted_keys if config.sync else ())]
        args.store = config.data_dir / "models"
        backend = None if config.runtime.backend == "auto" else config.runtime.backend
        return ModelStore(
            args.store, keep=args.keep, trusted_keys=keys or None, backend=backend, threads=config.runtime.threads
        )
    if args.data_dir is not None:
        args.store = args.data_dir / "models"
    return ModelStore(args.store, keep=args.keep, trusted_keys=trusted or None)


def _ls(args: argparse.Namespace) -> int:
    from ._output import print_json, print_table

    with _open_store(args) as store:
        rows = [
            {
                "name": v.name,
                "version": v.version,
                "slot": "active" if v.active else ("previous" if v.previous else ""),
                "format": v.format,
                "size": v.size,
                "created_at": v.created_at,
                "signed_by": v.key_id,
                "digest": v.digest[:16],
            }
            for v in store.versions()
        ]
    if args.json:
        print_json(rows)
    elif not rows:
        print(f"no models installed in {args.store}")
    else:
        print_table(rows, ["name", "version", "slot", "format", "size", "created_at", "signed_by", "digest"])
    return 0


def _install(args: argparse.Namespace) -> int:
    with _open_store(args, trusted=args.trusted_key) as store:
        v = store.install(args.bundle, activate=args.activate, allow_downgrade=args.allow_downgrade)
        state = "active" if store.active_version(v.name) == v.version else "installed"
    signed = f", signed by {v.key_id}" if v.key_id else ""
    print(f"{v.name} v{v.version} {state} ({v.digest[:16]}{signed})")
    return 0


def _activate(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        before = store.active_version(args.name)
        model = store.activate(args.name, args.version, allow_downgrade=args.allow_downgrade)
    was = f" (was v{before})" if before is not None and before != model.version else ""
    print(f"{model.name} v{model.version} is active{was}; health check passed")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        before = store.active_version(args.name)
        model = store.rollback(args.name)
    print(f"{model.name} rolled back to v{model.version} (was v{before})")
    return 0
