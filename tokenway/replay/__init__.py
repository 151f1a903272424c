"""Record and replay: chosen requests kept with their routing story, fetched back and sent again."""
