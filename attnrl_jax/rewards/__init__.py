"""Rewards: the math answer grader (``math.grade``) and its deadline-bounded batch form."""
