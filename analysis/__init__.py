"""ipso-analysis: statistics for the IPSO pediatric sepsis collaborative."""
__version__ = "0.1.0"
