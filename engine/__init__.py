"""zarrl.engine"""
