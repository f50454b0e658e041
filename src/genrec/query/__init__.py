"""Natural-language queries -> catalogue items: query data made from item text, a query model that generates
semantic IDs under the catalogue trie (every answer is a real item), an optional Hugging Face causal language
model doing the same, personalised search with a sequential recommender, and what a semantic-ID prefix stands for.
"""
