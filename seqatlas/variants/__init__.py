"""Variant effects from the atlas: parsing, scoring, look-up exposure, scans."""
