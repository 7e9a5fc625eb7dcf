"""Tokens and prompt exactly as upstream builds them: vocabulary, text, statistics, images, layout."""
