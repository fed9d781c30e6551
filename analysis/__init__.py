"""Statistics of a panostudy study: MOS with t-based CIs, observer screening (ITU-R BT.500, ITU-T P.913,
P.910 Annex E MLE), the paper's Table 1, mixed models, reliability, SSQ, figures and the HTML report.

Every function takes the long-format frames of ``study.export``; nothing heavy is imported here.
"""
