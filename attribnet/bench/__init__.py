"""The benchmarks behind `attribnet bench …`: each writes JSON and a Markdown table."""
