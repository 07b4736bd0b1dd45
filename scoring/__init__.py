"""Scoring shared by training and the scripts: embedding extraction, SASV / ASV / CM scorers, score files
and metric summaries."""
