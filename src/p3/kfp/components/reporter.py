"""Component: the per-epoch selection report, and the run report so far (``p3 report``)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output

from p3.kfp.components.images import BASE


@dsl.component(base_image=BASE, install_kfp_package=False)
def reporter(
    problems: Input[Dataset],
    difficulty: Input[Dataset],
    selection: Input[Dataset],
    selection_report: Input[Dataset],
    evaluation: Input[Dataset],
    html: Output[HTML],
    markdown: Output[Markdown],
    metrics: Output[Metrics],
    run: Output[Artifact],
    run_html: Output[HTML],
    run_markdown: Output[Markdown],
    epoch: int = 0,
    seed: int = 0,
    previous_run: Input[Artifact] = None,
):
    """Render epoch ``epoch``'s report and the report of every epoch so far.

    Args:
        problems: Problems table (levels/types for coverage).
        difficulty: This epoch's difficulty table.
        selection: This epoch's selection.
        selection_report: The selector's JSON report.
        evaluation: This epoch's evaluation JSON.
        html: Output: this epoch's report page (Kubeflow UI HTML viewer).
        markdown: Output: the same as Markdown.
        metrics: Output: accuracy, selected, eligible, threshold.
        run: Output: the run folder (epoch_0 … epoch_e), handed to the next epoch's report.
        run_html: Output: one page with every epoch so far (the last epoch's is the run's report).
        run_markdown: Output: the same as Markdown.
        epoch: This epoch, 0-based.
        seed: Seed of the random-selection diversity baseline.
        previous_run: The previous epoch's ``run`` folder.
    """
    from p3.logs import configure

    configure(epoch=epoch)  # an entry point: the step's log lines go to its pod log, naming the epoch
    import os

    from p3 import report, rundata, storage
    from p3.kfp.components._glue import add_epoch

    files = {"difficulty": difficulty.path, "selection": selection.path,
             "selection_report": selection_report.path, "metrics": evaluation.path}
    epoch_dir = add_epoch(run.path, epoch, files, problems.path, previous_run.path if previous_run else None)
    previous_dir = os.path.join(run.path, f"epoch_{epoch - 1}") if epoch > 0 else None
    data = rundata.load_epoch_dir(epoch_dir, previous_dir, problems=problems.path)
    page, md, scalars = report.render_epoch(data, seed=seed)
    storage.write_text(page, html.path)
    storage.write_text(md, markdown.path)
    scalars = {k: v for k, v in scalars.items() if v is not None}
    for name, value in scalars.items():
        metrics.log_metric(name, value)
    storage.write_json(scalars, metrics.path)  # a real file, as in the evaluator
    # this epoch as loaded and rendered above; the earlier ones from their folders
    earlier = rundata.find_epoch_dirs(run.path)[:-1]
    run_page, run_md = report.render_run([*earlier, data], seed=seed, problems=problems.path)
    storage.write_text(run_page, run_html.path)
    storage.write_text(run_md, run_markdown.path)
