"""Reading builds back: diffs, Markdown, committed manifests, history, the HTML report, A/B re-measures."""
