import sys

from cifar_lightning.report.cli import main

sys.exit(main())
