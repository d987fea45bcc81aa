"""The knowledge pack: public multiple-choice benchmarks shipped as data (see MANIFEST.json for sources,
commits, licenses and sha256s; scripts/build_knowledge_pack.py rebuilds it). Read by evaluation/knowledge_items.py."""
