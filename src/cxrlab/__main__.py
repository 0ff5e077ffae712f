"""python -m cxrlab"""

from cxrlab.cli import main

if __name__ == "__main__":
    main()
