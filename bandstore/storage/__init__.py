"""The storage layer: the catalog (LMDB), block and layout files, versions and their garbage
collection, row codecs and DRAM arrays. It is the only layer that touches LMDB and files."""
