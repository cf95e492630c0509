"""The sequence stage: reading FASTA/FASTQ, chunk boundaries, six-frame translation, filters."""
