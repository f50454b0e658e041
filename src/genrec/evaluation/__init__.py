"""Evaluation: Recall/NDCG on item IDs over the full catalogue for every user, per ranking method."""
