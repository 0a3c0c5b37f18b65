"""``python -m avse.data.synthetic``: write a synthetic corpus."""
from avse.data.synthetic.layouts import main

raise SystemExit(main())
