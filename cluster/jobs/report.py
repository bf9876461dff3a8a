"""`python -m cluster.jobs.report --pipeline-dir runs/pipeline` — the run's HTML report (evaluation/report.py)."""

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pipeline-dir", required=True, help="the pipeline's run dir")
    parser.add_argument("--out", default=None, help="where to write (default <pipeline-dir>/report)")
    args = parser.parse_args(argv)
    from evaluation.report import build_report

    print(f"report: {build_report(args.pipeline_dir, args.out)}")


if __name__ == "__main__":
    main()
