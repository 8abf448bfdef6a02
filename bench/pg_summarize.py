import sys
print("summary TODO")
