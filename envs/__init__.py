"""zarrl.envs"""
