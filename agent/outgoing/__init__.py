"""What a destination receives when it is not the file as stored (issue 25):
coercion and de-identification of the copy that goes out."""
