"""``phi3v-train export``: merge a LoRA/QLoRA adapter into its base as an ordinary checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from phi3v_data.cli.errors import check_apart, check_writable, is_verbose
from phi3v_train.cli.inputs import load_failures
from phi3v_train.cli.options import precision_option
from phi3v_train.cli.quiet import quiet_libraries


@click.command("export")
@click.option("--adapter", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Adapter directory (RUN/final of a lora/qlora run) or the run directory.")
@click.option("--base", type=str, default=None,
              help="Full-precision base model [default: the adapter's base_model_name_or_path].")
@click.option("--out", "--output", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Merged checkpoint directory.")
@precision_option(default=None, help="Saved precision [default: the base's].")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
def export(adapter: Path, base: str | None, out: Path, precision: str | None, overwrite: bool) -> None:
    """Merge an adapter into its base and save it loadable by Phi3VForCausalLM.from_pretrained.

    A QLoRA adapter is merged onto the unquantised base, never onto NF4 weights.

    \b
    Example:
        phi3v-train export --adapter runs/docvqa-qlora/final --out models/docvqa-merged
    """
    _refuse_overlap(out, adapter=adapter, base=base)
    check_writable("--out", out, directory=True)
    quiet_libraries(verbose=is_verbose(click.get_current_context()))
    from phi3v_train.loading import LoadError
    from phi3v_train.merge import merge_adapter
    from phi3v_train.model.modeling_phi3v import MissingWeightsError

    # OSError: a checkpoint file transformers could not read
    with load_failures(f"--adapter {adapter} (or its base)", LoadError, MissingWeightsError, OSError):
        merged = merge_adapter(adapter, out=out, base=base, dtype=precision, overwrite=overwrite)
    click.echo(f"merged checkpoint written to {merged}")


def _refuse_overlap(out: Path, *, adapter: Path, base: str | None) -> None:
    """--out must neither be, contain nor lie inside what the export reads (the shared output rule): --overwrite
    replaces --out whole, so a run directory or base checkpoint given as (or above) --out would be deleted. A run
    directory given as --adapter may hold --out (RUN/merged): only its final/ is read. A usage error (exit 2),
    before anything loads."""
    from phi3v_train.loading import LoadError, adapter_base, resolve_model_dir  # noqa: PLC0415 - imports torch

    check_apart("--out", out, [], may_hold=[("the --adapter directory", adapter)])
    inputs: list[tuple[str, Path]] = []
    try:
        adapter_dir = resolve_model_dir(adapter)
        inputs.append(("the adapter directory", adapter_dir))
        base_path = Path(adapter_base(adapter_dir, base=base))
        if base_path.exists():  # a Hub id is no path here
            inputs.append(("the base model directory", base_path))
    except LoadError:
        pass  # the merge itself reports what is wrong with them
    check_apart("--out", out, inputs)
