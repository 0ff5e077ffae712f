"""Reports on finished training runs: one self-contained HTML page, figures and tables."""
