from aioreg.cli import main

raise SystemExit(main())
