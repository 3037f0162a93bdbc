"""Evaluation protocols: the data sets' test splits scored with NME, FR, AUC and CED."""
