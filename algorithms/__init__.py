"""zarrl.algorithms"""
