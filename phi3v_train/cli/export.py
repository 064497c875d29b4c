"""``phi3v-train export``: merge a LoRA/QLoRA adapter into its base as an ordinary checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from phi3v_data.cli.errors import check_writable, is_verbose, weights_problem
from phi3v_train.cli.eval import PRECISIONS
from phi3v_train.cli.run_checks import quiet_libraries


@click.command("export")
@click.option("--adapter", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Adapter directory (RUN/final of a lora/qlora run) or the run directory.")
@click.option("--base", type=str, default=None,
              help="Full-precision base model [default: the adapter's base_model_name_or_path].")
@click.option("--out", "--output", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Merged checkpoint directory.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None, help="Saved precision [default: the base's].")
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

    try:
        merged = merge_adapter(adapter, out=out, base=base, dtype=precision, overwrite=overwrite)
    except (LoadError, MissingWeightsError, OSError) as exc:  # OSError: a checkpoint file transformers could not read
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        problem = weights_problem(exc)
        if problem is None:
            raise
        raise click.ClickException(f"--adapter {adapter} (or its base): {problem}") from None
    click.echo(f"merged checkpoint written to {merged}")


def _refuse_overlap(out: Path, *, adapter: Path, base: str | None) -> None:
    """--out must neither be nor contain what the export reads: --overwrite replaces --out whole, so a run directory
    or base checkpoint given as (or above) --out would be deleted. A usage error (exit 2), before anything loads."""
    from phi3v_train.loading import LoadError, adapter_base, resolve_model_dir  # noqa: PLC0415 - imports torch

    inputs = [("--adapter", adapter)]
    try:
        adapter_dir = resolve_model_dir(adapter)
        inputs.append(("adapter", adapter_dir))
        inputs.append(("base model", Path(adapter_base(adapter_dir, base=base))))
    except LoadError:
        pass  # the merge itself reports what is wrong with them
    target = out.resolve()
    for name, path in inputs:
        source = path.resolve()
        if path.exists() and (target == source or target in source.parents):
            relation = "is" if target == source else "contains"
            raise click.UsageError(
                f"--out {out} {relation} the {name} directory {path}; exporting there would replace what the export "
                f"reads. Choose an --out outside it, e.g. {source.parent / (source.name + '-merged')}")
