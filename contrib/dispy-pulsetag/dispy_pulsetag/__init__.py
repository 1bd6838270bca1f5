"""An autoloaded extra (group ``dispy.plugins``): tags node pulses with a value from the site config."""
