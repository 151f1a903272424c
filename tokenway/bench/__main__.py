import sys

from tokenway.bench.cli import main

sys.exit(main(sys.argv[1:]))
