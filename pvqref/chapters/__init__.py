"""What a chapter shows: its experiments' loops, tables and figures, so that the chapter's
cells show the idea in a few lines. One module per chapter.
"""
